"""The ctypes declarations of painn._engine against include/painn.h.

ctypes trusts whatever argtypes it is given: a binding that drifts from the C header (an
argument added, an int32 that became an int64, a model handle where a calculator goes)
still loads and then corrupts the stack or the data silently. These tests parse the header
(as cbindgen writes it) and compare every function's return type and every argument type,
in order, with ``_PROTOTYPES``, and the status codes and ABI version with the header's
constants. They need neither a compiler nor libpainn.so: _engine.py loads the library only
on first use, so executing the module is enough.
"""

import ctypes
import importlib.util
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "include" / "painn.h"
ENGINE = REPO / "python" / "painn" / "_engine.py"

# painn_compute's array arguments are bound as c_void_p: _engine passes raw addresses
# (`ndarray.ctypes.data`), cheaper per call than data_as(POINTER(...)). There c_void_p
# stands for any data pointer of the header; the handle and the count must match exactly.
ADDRESS_ARGUMENTS = {"painn_compute": range(2, 11)}

# `const uint8_t *data` is bound as c_char_p so that a bytes object passes as it is
# (POINTER(c_uint8) rejects bytes); the same pointer in the ABI.
BYTE_ARGUMENTS = {("painn_model_load_buffer", 0)}

# Header functions deliberately without a binding: none.
# C-only entry points: the per-layer ghost exchange takes C callbacks and serves MD codes
# with domain decomposition (the LAMMPS plugin), not Python.
UNBOUND_FUNCTIONS = {"painn_compute_exchanging", "painn_model_exchange_width"}


# --- ctypes types as comparable keys -------------------------------------------------------
# ctypes has aliases that differ by platform (c_int64 is c_long here, c_longlong on
# Windows), so types are compared by what they are: ("int", signed, bytes), ("float",
# bytes), ("char",), ("bool",), ("void",), ("ptr", pointee), ("struct", class).

_SIGNED, _UNSIGNED, _FLOATS = "bhilq", "BHILQ", "fdg"


def ctypes_key(t):
    """The comparable key of a ctypes type (None: void)."""
    if t is None:
        return ("void",)
    if isinstance(t, type) and issubclass(t, ctypes._Pointer):
        return ("ptr", ctypes_key(t._type_))
    if isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union)):
        return ("struct", t)
    if isinstance(t, type) and issubclass(t, ctypes._SimpleCData):
        code = t._type_
        if code in _SIGNED or code in _UNSIGNED:
            return ("int", code in _SIGNED, ctypes.sizeof(t))
        if code in _FLOATS:
            return ("float", ctypes.sizeof(t))
        simple = {"c": ("char",), "?": ("bool",), "z": ("ptr", ("char",)),
                  "P": ("ptr", ("void",)), "Z": ("ptr", ("wchar",))}
        if code in simple:
            return simple[code]
    return ("unknown", t)


def key_name(key):
    """The ctypes spelling of a key, for messages: c_int32, POINTER(_Model), c_char_p."""
    kind = key[0]
    if kind == "void":
        return "None"
    if kind == "int":
        return f"c_{'' if key[1] else 'u'}int{8 * key[2]}"
    if kind == "float":
        return {4: "c_float", 8: "c_double"}.get(key[1], "c_longdouble")
    if kind in ("char", "bool", "wchar"):
        return f"c_{kind}"
    if kind == "ptr":
        if key[1] in (("char",), ("void",), ("wchar",)):
            return f"c_{key[1][0]}_p"
        return f"POINTER({key_name(key[1])})"
    if kind == "struct":
        return key[1].__name__
    return repr(key[1])


# C scalar types of a cbindgen header, as ctypes types.
_C_SCALARS = {
    "int8_t": ctypes.c_int8, "int16_t": ctypes.c_int16, "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64, "uint8_t": ctypes.c_uint8, "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t,
    "ptrdiff_t": ctypes.c_ssize_t, "intptr_t": ctypes.c_ssize_t, "uintptr_t": ctypes.c_size_t,
    "float": ctypes.c_float, "double": ctypes.c_double, "bool": ctypes.c_bool,
    "_Bool": ctypes.c_bool, "char": ctypes.c_char, "signed char": ctypes.c_byte,
    "unsigned char": ctypes.c_ubyte, "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "unsigned": ctypes.c_uint, "long": ctypes.c_long, "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong, "unsigned long long": ctypes.c_ulonglong,
}


# --- header parsing ------------------------------------------------------------------------

@dataclass(frozen=True)
class CType:
    """A C type: a base name (no qualifiers) and a pointer depth; `text` as in the header."""

    base: str
    stars: int
    text: str


@dataclass
class Function:
    name: str
    restype: CType
    params: list  # [(parameter name, CType)]


@dataclass
class Header:
    functions: dict = field(default_factory=dict)  # name -> Function, in header order
    constants: dict = field(default_factory=dict)  # integer #defines and enum values
    typedefs: dict = field(default_factory=dict)  # alias -> CType
    structs: set = field(default_factory=set)  # opaque struct typedefs


_QUALIFIERS = {"const", "volatile", "restrict"}
_INTEGER = r"\(?\s*(-?(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*\s*\)?"


def _strip_comments(text):
    """Removes /* */ and // comments, keeping line breaks (for the line-based #defines)."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _remove_extern_c(code):
    """Removes `extern "C" {` and its closing brace (the cpp_compat wrapper)."""
    while (match := re.search(r'extern\s+"C"\s*\{', code)):
        depth, i = 1, match.end()
        while depth:
            if i == len(code):
                raise ValueError('painn.h: unbalanced extern "C" block')
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        code = code[:match.start()] + code[match.end():i - 1] + code[i:]
    return code


def _statements(code):
    """The top-level declarations (split on `;` outside braces), whitespace-normalised."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(code):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == ";" and depth == 0:
            out.append(" ".join(code[start:i].split()))
            start = i + 1
    if code[start:].strip():
        raise ValueError(f"painn.h: trailing text without `;`: {code[start:].strip()!r}")
    return [s for s in out if s]


def parse_type(text, named):
    """`const painn_model_t *model` -> ("model", CType("painn_model_t", 1, ...)); with
    named=False, a type alone (a return type)."""
    tokens = re.findall(r"[A-Za-z_]\w*|\*|\S", text)
    if any(t != "*" and not re.fullmatch(r"[A-Za-z_]\w*", t) for t in tokens):
        raise ValueError(f"painn.h: unsupported declarator {text!r} (arrays, function pointers)")
    name = None
    if named:
        if len(tokens) < 2 or tokens[-1] == "*" or tokens[-1] in _QUALIFIERS:
            raise ValueError(f"painn.h: parameter without a name: {text!r}")
        name = tokens.pop()
    words = [t for t in tokens if t not in _QUALIFIERS and t != "*"]
    first_star = tokens.index("*") if "*" in tokens else len(tokens)
    if not words or any(t not in _QUALIFIERS for t in tokens[first_star:] if t != "*"):
        raise ValueError(f"painn.h: cannot read the type of {text!r}")
    if words[0] in ("struct", "enum", "union"):
        words = words[1:]
    spelled = " ".join(tokens)
    spelled = re.sub(r"\s*\*\s*", "*", spelled)
    spelled = re.sub(r"(?<=\w)\*", " *", spelled)
    return name, CType(" ".join(words), tokens.count("*"), spelled.strip())


def _enum_constants(body, constants):
    value = -1
    for item in filter(None, (i.strip() for i in body.split(","))):
        m = re.fullmatch(r"(\w+)(?:\s*=\s*" + _INTEGER + r")?", item)
        if not m:
            raise ValueError(f"painn.h: cannot read enumerator {item!r}")
        value = int(m.group(2), 0) if m.group(2) else value + 1
        constants[m.group(1)] = value


def parse_header(text):
    """Functions, integer constants and typedefs of a cbindgen C header."""
    header = Header()
    lines = []
    for line in _strip_comments(text).replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            m = re.fullmatch(r"\s*#\s*define\s+(\w+)\s+" + _INTEGER + r"\s*", line)
            if m:
                header.constants[m.group(1)] = int(m.group(2), 0)
            continue  # includes, guards and conditionals declare nothing
        lines.append(line)
    for stmt in _statements(_remove_extern_c("\n".join(lines))):
        m = re.fullmatch(r"typedef (?:struct|union) (\w+) (\w+)", stmt)
        if m and m.group(1) == m.group(2):
            header.structs.add(m.group(1))
            continue
        m = re.fullmatch(r"typedef (?:struct|union) \{.*\} (\w+)", stmt)
        if m:  # a struct with fields (the ghost exchange's callbacks), passed by pointer
            header.structs.add(m.group(1))
            continue
        m = re.fullmatch(r"typedef [^{}()]+ \(\*(\w+)\)\([^(){}]*\)", stmt)
        if m:  # a function pointer type (callbacks): no ctypes mapping is checked for it
            header.typedefs[m.group(1)] = CType("function pointer", 0, stmt)
            continue
        m = re.fullmatch(r"(?:typedef )?enum(?: \w+)? ?\{(.*)\}(?: ?(\w+))?", stmt)
        if m:
            _enum_constants(m.group(1), header.constants)
            if m.group(2):
                header.typedefs[m.group(2)] = CType("int", 0, "int")
            continue
        m = re.fullmatch(r"typedef ([^{}()]+)", stmt)
        if m:
            alias, ctype = parse_type(m.group(1), named=True)
            header.typedefs[alias] = ctype
            continue
        m = re.fullmatch(r"([^{}()]+?) ?\b([A-Za-z_]\w*) ?\(([^(){}]*)\)", stmt)
        if m:
            _, restype = parse_type(m.group(1), named=False)
            params = [p.strip() for p in m.group(3).split(",")]
            if params in ([""], ["void"]):
                params = []
            name = m.group(2)
            if name in header.functions:
                raise ValueError(f"painn.h: {name} declared twice")
            header.functions[name] = Function(name, restype, [parse_type(p, True) for p in params])
            continue
        raise ValueError(f"painn.h: cannot parse the declaration {stmt!r}")
    return header


# --- the checks ----------------------------------------------------------------------------

class _NoMapping(Exception):
    pass


def c_key(ctype, header, structs):
    """The ctypes key of a header type; `structs` maps opaque struct names to the binding's
    ctypes.Structure classes. const is dropped (ctypes has none); char * is c_char_p."""
    base, stars = ctype.base, ctype.stars
    seen = set()
    while base in header.typedefs:
        if base in seen:
            raise _NoMapping(f"typedef cycle through {base}")
        seen.add(base)
        target = header.typedefs[base]
        base, stars = target.base, stars + target.stars
    if base == "void":
        key = ("void",)
    elif base in header.structs:
        if base not in structs:
            raise _NoMapping(f"no binding class for the opaque struct {base}")
        if stars == 0:
            raise _NoMapping(f"opaque struct {base} by value")
        key = ("struct", structs[base])
    elif base in _C_SCALARS:
        key = ctypes_key(_C_SCALARS[base])
    else:
        raise _NoMapping(f"unknown C type {base}")
    for _ in range(stars):
        key = ("ptr", key)
    return key


def _pointer_to_scalar(key):
    return key[0] == "ptr" and key[1][0] in ("int", "float", "char", "bool")


def check_prototypes(header, prototypes, structs, address_arguments=ADDRESS_ARGUMENTS,
                     byte_arguments=BYTE_ARGUMENTS, unbound=UNBOUND_FUNCTIONS):
    """Every difference between the header's functions and `prototypes` (name ->
    (restype, argtypes)), one message each; empty when they match."""
    problems = []
    for name in header.functions:
        if name not in prototypes and name not in unbound:
            problems.append(f"{name}: declared in painn.h, missing from _PROTOTYPES")
    for name in prototypes:
        if name not in header.functions:
            problems.append(f"{name}: in _PROTOTYPES, not declared in painn.h")

    def compare(name, where, ctype, bound, accept=lambda expected, actual: False):
        try:
            expected = c_key(ctype, header, structs)
        except _NoMapping as error:
            problems.append(f"{name} {where}: header `{ctype.text}` has no ctypes mapping "
                            f"here ({error}); binding {key_name(ctypes_key(bound))}")
            return
        actual = ctypes_key(bound)
        if actual != expected and not accept(expected, actual):
            problems.append(f"{name} {where}: header `{ctype.text}` -> {key_name(expected)}, "
                            f"binding has {key_name(actual)}")

    for name, function in header.functions.items():
        if name not in prototypes:
            continue
        restype, argtypes = prototypes[name]
        compare(name, "restype", function.restype, restype)
        if len(argtypes) != len(function.params):
            problems.append(f"{name}: header has {len(function.params)} arguments, "
                            f"binding has {len(argtypes)}")
        for i, (param, ctype) in enumerate(function.params):
            where = f"argtypes[{i}] ({param})"
            if i >= len(argtypes):
                problems.append(f"{name} {where}: header `{ctype.text}`, binding has none")
                continue

            def accept(expected, actual, i=i):
                if i in address_arguments.get(name, ()):
                    return actual == ("ptr", ("void",)) and _pointer_to_scalar(expected)
                if (name, i) in byte_arguments:
                    return expected == ("ptr", ("int", False, 1)) and actual == ("ptr", ("char",))
                return False

            compare(name, where, ctype, argtypes[i], accept)
        for i in range(len(function.params), len(argtypes)):
            problems.append(f"{name} argtypes[{i}]: not in the header, binding has "
                            f"{key_name(ctypes_key(argtypes[i]))}")
    return problems


def check_constants(header, engine):
    """ABI_VERSION and the status codes (SUCCESS, ..., STATUS_NAMES) of `engine` against
    the header's PAINN_* integer constants; every one but PAINN_ABI_VERSION is a status."""
    problems = []
    abi = header.constants.get("PAINN_ABI_VERSION")
    if abi != engine.ABI_VERSION:
        problems.append(f"ABI_VERSION: header PAINN_ABI_VERSION = {abi}, "
                        f"binding has {engine.ABI_VERSION}")
    statuses = {name: value for name, value in header.constants.items()
                if name.startswith("PAINN_") and name != "PAINN_ABI_VERSION"}
    for name, value in statuses.items():
        short = name[len("PAINN_"):]
        bound = getattr(engine, short, None)
        if bound != value:
            problems.append(f"{short}: header {name} = {value}, binding has {bound}")
        if engine.STATUS_NAMES.get(value) != name:
            problems.append(f"STATUS_NAMES[{value}]: header {name}, "
                            f"binding has {engine.STATUS_NAMES.get(value)!r}")
    for value, name in engine.STATUS_NAMES.items():
        if statuses.get(name) != value:
            problems.append(f"STATUS_NAMES[{value}] = {name!r}: header has "
                            f"{name} = {statuses.get(name)}")
    return problems


# --- tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    # By path, so that the file checked is this checkout's, not an installed copy.
    spec = importlib.util.spec_from_file_location("_painn_engine_checked", ENGINE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while executing it
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def header():
    return parse_header(HEADER.read_text())


def _structs(engine):
    return {"painn_model_t": engine._Model, "painn_calculator_t": engine._Calculator}


def test_prototypes_match_header(engine, header):
    assert "painn_compute" in header.functions and len(header.functions) >= 10
    problems = check_prototypes(header, engine._PROTOTYPES, _structs(engine))
    assert not problems, "_engine._PROTOTYPES differs from include/painn.h:\n" + "\n".join(problems)


def test_constants_match_header(engine, header):
    assert "PAINN_SUCCESS" in header.constants
    problems = check_constants(header, engine)
    assert not problems, "_engine's constants differ from include/painn.h:\n" + "\n".join(problems)


def test_checker_reports_mismatches(engine, header):
    """The checks fail, naming function, argument and both types, on altered bindings."""
    c = ctypes
    altered = dict(engine._PROTOTYPES)
    restype, argtypes = altered["painn_compute_float"]
    altered["painn_compute_float"] = (restype,
                                      argtypes[:3] + [c.POINTER(c.c_double)] + argtypes[4:])
    restype, argtypes = altered["painn_calculator_create"]  # a model handle for the out param
    altered["painn_calculator_create"] = (restype, argtypes[:4] + [c.POINTER(engine._model_p)])
    restype, argtypes = altered["painn_compute_local"]
    altered["painn_compute_local"] = (restype, argtypes[:-1])
    restype, argtypes = altered["painn_compute"]  # c_void_p is accepted for arrays, not n_atoms
    altered["painn_compute"] = (restype, argtypes[:1] + [c.c_void_p] + argtypes[2:])
    altered["painn_abi_version"] = (c.c_int32, [])
    del altered["painn_model_max_z"]
    altered["painn_model_elements"] = (engine._status, [engine._model_p])

    problems = check_prototypes(header, altered, _structs(engine))
    expected = [
        "painn_compute_float argtypes[3] (positions): header `const float *` -> "
        "POINTER(c_float), binding has POINTER(c_double)",
        "painn_calculator_create argtypes[4] (calculator): header `painn_calculator_t **` -> "
        "POINTER(POINTER(_Calculator)), binding has POINTER(POINTER(_Model))",
        "painn_compute_local: header has 10 arguments, binding has 9",
        "painn_compute_local argtypes[9] (atom_virials): header `double *`, binding has none",
        "painn_compute argtypes[1] (n_atoms): header `int64_t` -> c_int64, binding has c_void_p",
        "painn_abi_version restype: header `uint32_t` -> c_uint32, binding has c_int32",
        "painn_model_max_z: declared in painn.h, missing from _PROTOTYPES",
        "painn_model_elements: in _PROTOTYPES, not declared in painn.h",
    ]
    assert sorted(problems) == sorted(expected)

    # Constants: a changed code, a renamed status and a stale ABI version.
    fake = types.SimpleNamespace(**{k: getattr(engine, k) for k in dir(engine) if k.isupper()})
    fake.IO_ERROR = 7
    fake.STATUS_NAMES = {**engine.STATUS_NAMES, 5: "PAINN_NOT_SUPPORTED"}
    fake.ABI_VERSION = engine.ABI_VERSION + 1
    problems = check_constants(header, fake)
    abi = header.constants["PAINN_ABI_VERSION"]
    assert sorted(problems) == sorted([
        f"ABI_VERSION: header PAINN_ABI_VERSION = {abi}, binding has {abi + 1}",
        "IO_ERROR: header PAINN_IO_ERROR = 3, binding has 7",
        "STATUS_NAMES[5]: header PAINN_UNSUPPORTED, binding has 'PAINN_NOT_SUPPORTED'",
        "STATUS_NAMES[5] = 'PAINN_NOT_SUPPORTED': header has PAINN_NOT_SUPPORTED = None",
    ])


def test_parser_reads_cbindgen_layouts():
    """Comments are skipped; multi-line prototypes, (void), pointer-to-pointer, typedef
    chains and enum constants are read; what it cannot read is an error, not skipped."""
    text = """
    #define PAINN_ABI_VERSION 0x2
    typedef struct painn_model_t painn_model_t;
    typedef int32_t painn_status_t;
    enum painn_kind { PAINN_A = 4, PAINN_B, };
    /* painn_status_t painn_hidden(void); */
    // painn_status_t painn_hidden_too(void);
    #ifdef __cplusplus
    extern "C" {
    #endif
    painn_status_t painn_load(const char *path, /* inline */
                              painn_model_t **model);
    const char *painn_name(void);
    bool painn_flag(const painn_model_t *m, size_t n, char *buf, const char *const *names);
    #ifdef __cplusplus
    }  // extern "C"
    #endif
    """
    parsed = parse_header(text)
    assert list(parsed.functions) == ["painn_load", "painn_name", "painn_flag"]
    assert parsed.constants == {"PAINN_ABI_VERSION": 2, "PAINN_A": 4, "PAINN_B": 5}

    class Model(ctypes.Structure):
        pass

    def keys(name):
        function = parsed.functions[name]
        declared = [function.restype] + [t for _, t in function.params]
        return [c_key(t, parsed, {"painn_model_t": Model}) for t in declared]

    c = ctypes
    assert keys("painn_load") == [ctypes_key(t) for t in (
        c.c_int32, c.c_char_p, c.POINTER(c.POINTER(Model)))]
    assert keys("painn_name") == [ctypes_key(c.c_char_p)]
    assert keys("painn_flag") == [ctypes_key(t) for t in (
        c.c_bool, c.POINTER(Model), c.c_size_t, c.c_char_p, c.POINTER(c.c_char_p))]
    assert parsed.functions["painn_flag"].params[3][1].text == "const char *const *"

    for bad in ("void painn_cb(void (*f)(int));", "void painn_arr(double x[3]);",
                "struct painn_open { int a; };"):
        with pytest.raises(ValueError, match="painn.h"):
            parse_header(bad)
