//! Extended XYZ, as ASE writes it:
//!
//! ```text
//! 3
//! Lattice="10 0 0 0 10 0 0 0 10" Properties=species:S:1:pos:R:3 pbc="T T F"
//! O 0.0 0.0 0.0
//! H 0.96 0.0 0.0
//! H -0.24 0.93 0.0
//! ```
//!
//! Species come from a `species:S:1` column (element symbols) or a `Z:I:1` column (atomic
//! numbers); positions from `pos:R:3`; other columns are skipped. Without `Properties` the
//! columns are `species pos`. With `Lattice` and no `pbc`, every axis is periodic (ASE's
//! rule). Several frames may follow one another.

use std::collections::HashMap;

use super::elements::atomic_number;
use crate::cell::Matrix3;
use crate::error::{Error, Result, try_reserve};

/// One frame of an extended XYZ file.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub atomic_numbers: Vec<i32>,
    /// `[n][3]`, Angstrom.
    pub positions: Vec<[f64; 3]>,
    /// Lattice vectors as rows, Angstrom.
    pub lattice: Option<Matrix3>,
    pub pbc: [bool; 3],
}

/// Parses every frame of `text`; `path` names the file in error messages.
///
/// Hostile input is an error, never an abort: a frame's declared atom count only sizes its
/// buffers up to what the rest of the file can hold, every buffer grows fallibly, and
/// messages show invisible characters by name (a byte-order mark, control characters).
pub fn parse(text: &str, path: &str) -> Result<Vec<Frame>> {
    let fail = |line: usize, reason: String| Error::Parse {
        path: path.to_string(),
        line,
        reason,
    };
    let mut lines = Lines { text, position: 0 };
    let mut line_number = 0;
    let mut next_line = || {
        let line = lines.next()?;
        line_number += 1;
        Some((line_number, line, lines.remaining()))
    };
    let mut frames = Vec::new();
    while let Some((count_line, count_text, _)) = next_line() {
        if count_text.trim().is_empty() {
            continue;
        }
        let n_atoms = parse_count(count_text).map_err(|reason| fail(count_line, reason))?;
        let (_, comment, remaining) =
            next_line().ok_or_else(|| fail(count_line + 1, "missing comment line".into()))?;
        let info = parse_key_values(comment).map_err(|reason| fail(count_line + 1, reason))?;
        let lattice = match info.get("lattice") {
            Some(value) => {
                Some(parse_lattice(value).map_err(|reason| fail(count_line + 1, reason))?)
            }
            None => None,
        };
        let pbc = match info.get("pbc") {
            Some(value) => parse_pbc(value).map_err(|reason| fail(count_line + 1, reason))?,
            None => [lattice.is_some(); 3],
        };
        if pbc.iter().any(|&p| p) && lattice.is_none() {
            return Err(fail(
                count_line + 1,
                "pbc is set but there is no Lattice".into(),
            ));
        }
        let columns = Columns::parse(
            info.get("properties")
                .map(String::as_str)
                .unwrap_or("species:S:1:pos:R:3"),
        )
        .map_err(|reason| fail(count_line + 1, reason))?;

        // An atom line holds at least `columns.total` fields, each a character followed by
        // a space or the line's end: the declared count sizes nothing beyond what the rest
        // of the file can hold (a header of 2,000,000,000 atoms over three lines ends in
        // "file ends after 3 of 2000000000 atoms", not in a 48 GB allocation).
        let room = n_atoms.min((remaining + 1) / columns.total.saturating_mul(2));
        let mut atomic_numbers = Vec::new();
        let mut positions = Vec::new();
        let frame_buffers = || format!("the atoms of the frame on line {count_line}");
        try_reserve(&mut atomic_numbers, room, frame_buffers)?;
        try_reserve(&mut positions, room, frame_buffers)?;
        for atom in 0..n_atoms {
            let line_number = count_line + 2 + atom;
            let (_, line, _) = next_line().ok_or_else(|| {
                fail(
                    line_number,
                    format!("file ends after {atom} of {n_atoms} atoms"),
                )
            })?;
            // The fields this reader needs, without collecting a line's every field (a line
            // may hold millions).
            let (species, position) = (columns.species_column(), columns.position);
            let (mut species_text, mut coordinates, mut found) = ("", [""; 3], 0);
            for (column, field) in line.split_whitespace().enumerate().take(columns.total) {
                if column == species {
                    species_text = field;
                } else if (position..position + 3).contains(&column) {
                    coordinates[column - position] = field;
                }
                found = column + 1;
            }
            if found < columns.total {
                return Err(fail(
                    line_number,
                    format!("expected {} columns, found {found}", columns.total),
                ));
            }
            let z = match columns.species {
                Species::Symbol(_) => atomic_number(species_text).ok_or_else(|| {
                    fail(
                        line_number,
                        format!("unknown element `{}`", shown(species_text)),
                    )
                })?,
                Species::Number(_) => species_text.parse().map_err(|_| {
                    fail(
                        line_number,
                        format!("invalid atomic number `{}`", shown(species_text)),
                    )
                })?,
            };
            let mut r = [0.0; 3];
            for x in 0..3 {
                let text = coordinates[x];
                r[x] = parse_real(text).map_err(|reason| {
                    fail(
                        line_number,
                        format!("invalid coordinate `{}`{reason}", shown(text)),
                    )
                })?;
            }
            try_reserve(&mut atomic_numbers, 1, frame_buffers)?;
            try_reserve(&mut positions, 1, frame_buffers)?;
            atomic_numbers.push(z);
            positions.push(r);
        }
        try_reserve(&mut frames, 1, || format!("the frames of {path}"))?;
        frames.push(Frame {
            atomic_numbers,
            positions,
            lattice,
            pbc,
        });
    }
    if frames.is_empty() {
        return Err(fail(1, "no frames".into()));
    }
    Ok(frames)
}

/// The lines of a text as [`str::lines`] splits them (at `\n`, dropping a `\r` before it),
/// one at a time, knowing how many bytes are left.
struct Lines<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let rest = self
            .text
            .get(self.position..)
            .filter(|rest| !rest.is_empty())?;
        Some(match rest.find('\n') {
            Some(end) => {
                self.position += end + 1;
                let line = &rest[..end];
                line.strip_suffix('\r').unwrap_or(line)
            }
            None => {
                self.position = self.text.len();
                rest
            }
        })
    }

    /// Bytes after the last line returned.
    fn remaining(&self) -> usize {
        self.text.len() - self.position
    }
}

/// The atom count of a frame's first line.
fn parse_count(line: &str) -> std::result::Result<usize, String> {
    let token = line.trim();
    if let Ok(count) = token.parse::<usize>() {
        return Ok(count);
    }
    Err(match token.parse::<i128>() {
        Ok(negative) if negative < 0 => format!("the number of atoms is negative ({negative})"),
        Ok(huge) => format!("the number of atoms ({huge}) is beyond any file"),
        Err(_) if token.contains('\u{feff}') => format!(
            "expected the number of atoms, found `{}`: a byte-order mark (U+FEFF, invisible \
             in most editors) precedes it; save the file as UTF-8 without a byte-order mark",
            shown(token)
        ),
        Err(_) => format!("expected the number of atoms, found `{}`", shown(token)),
    })
}

/// A finite real number; the error is a suffix for the message.
fn parse_real(text: &str) -> std::result::Result<f64, &'static str> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(": not a finite number"),
        Err(_) => Err(""),
    }
}

/// Longest piece of the input quoted in a message, in characters.
const QUOTED_CHARACTERS: usize = 40;

/// `text` for a message: invisible characters named (`<byte-order mark U+FEFF>3`, a
/// control character as `<U+0007>`), long text cut short.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (index, c) in text.chars().enumerate() {
        if index == QUOTED_CHARACTERS {
            out.push_str("...");
            break;
        }
        match c {
            '\u{feff}' => out.push_str("<byte-order mark U+FEFF>"),
            '\u{00ad}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}' => out.push_str(&format!("<U+{:04X}>", c as u32)),
            c if c.is_control() => out.push_str(&format!("<U+{:04X}>", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `key=value` pairs of the comment line; values may be double-quoted. Keys lower-cased.
fn parse_key_values(line: &str) -> std::result::Result<HashMap<String, String>, String> {
    let mut pairs = HashMap::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quote in the value of `{key}`")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        pairs.insert(key.to_ascii_lowercase(), value);
    }
}

fn parse_lattice(value: &str) -> std::result::Result<Matrix3, String> {
    let numbers: Vec<f64> = value
        .split_whitespace()
        .map(|t| {
            parse_real(t).map_err(|reason| format!("invalid Lattice entry `{}`{reason}", shown(t)))
        })
        .collect::<std::result::Result<_, _>>()?;
    if numbers.len() != 9 {
        return Err(format!("Lattice has {} numbers, expected 9", numbers.len()));
    }
    Ok([
        [numbers[0], numbers[1], numbers[2]],
        [numbers[3], numbers[4], numbers[5]],
        [numbers[6], numbers[7], numbers[8]],
    ])
}

fn parse_pbc(value: &str) -> std::result::Result<[bool; 3], String> {
    let flags: Vec<bool> = value
        .split_whitespace()
        .map(|t| match t {
            "T" | "t" | "True" | "true" | "1" => Ok(true),
            "F" | "f" | "False" | "false" | "0" => Ok(false),
            other => Err(format!("invalid pbc flag `{}`", shown(other))),
        })
        .collect::<std::result::Result<_, _>>()?;
    match flags.as_slice() {
        [a, b, c] => Ok([*a, *b, *c]),
        [a] => Ok([*a; 3]),
        _ => Err(format!("pbc has {} flags, expected 3", flags.len())),
    }
}

enum Species {
    Symbol(usize),
    Number(usize),
}

struct Columns {
    species: Species,
    position: usize,
    total: usize,
}

impl Columns {
    fn species_column(&self) -> usize {
        match self.species {
            Species::Symbol(column) | Species::Number(column) => column,
        }
    }

    fn parse(properties: &str) -> std::result::Result<Columns, String> {
        let parts: Vec<&str> = properties.split(':').collect();
        if !parts.len().is_multiple_of(3) {
            return Err(format!(
                "Properties `{}` is not name:type:count triples",
                shown(properties)
            ));
        }
        let mut column = 0;
        let (mut species, mut position) = (None, None);
        for triple in parts.chunks(3) {
            let (name, kind) = (triple[0], triple[1]);
            let count: usize = triple[2].parse().map_err(|_| {
                format!(
                    "invalid column count `{}` for `{}`",
                    shown(triple[2]),
                    shown(name)
                )
            })?;
            match (name.to_ascii_lowercase().as_str(), kind, count) {
                ("species", "S", 1) => species = Some(Species::Symbol(column)),
                ("z" | "numbers", "I", 1) if species.is_none() => {
                    species = Some(Species::Number(column))
                }
                ("pos" | "positions", "R", 3) => position = Some(column),
                _ => {}
            }
            // Checked: a huge count must not wrap the column numbers around.
            column = column
                .checked_add(count)
                .ok_or_else(|| format!("column count {count} of `{}` is too large", shown(name)))?;
        }
        Ok(Columns {
            species: species.ok_or("Properties has no species:S:1 or Z:I:1 column")?,
            position: position.ok_or("Properties has no pos:R:3 column")?,
            total: column,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ase_writes() {
        let text = "3\nLattice=\"10.0 0.0 0.0 0.0 11.0 0.0 1.0 0.0 12.0\" Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc=\"T T F\"\nO 0.0 0.0 0.0 1 2 3\nH 0.96 0.0 0.0 1 2 3\nH -0.24 0.93 0.0 1 2 3\n";
        let frames = parse(text, "water.xyz").unwrap();
        assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        assert_eq!(frame.atomic_numbers, vec![8, 1, 1]);
        assert_eq!(frame.positions[2], [-0.24, 0.93, 0.0]);
        assert_eq!(frame.pbc, [true, true, false]);
        assert_eq!(frame.lattice.unwrap()[2], [1.0, 0.0, 12.0]);
    }

    #[test]
    fn atomic_number_column_and_plain_xyz() {
        let text = "2\nProperties=Z:I:1:pos:R:3\n6 0 0 0\n1 1.1 0 0\n2\nplain comment\nC 0 0 0\nH 0 0 1.1\n";
        let frames = parse(text, "two.xyz").unwrap();
        assert_eq!(frames[0].atomic_numbers, vec![6, 1]);
        assert_eq!(frames[1].atomic_numbers, vec![6, 1]);
        assert_eq!(frames[1].pbc, [false; 3]);
        assert_eq!(frames[1].lattice, None);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("x\n\n", 1, "number of atoms"),
            ("2\n\nC 0 0 0\n", 4, "ends after 1 of 2"),
            ("1\n\nC 0 zero 0\n", 3, "invalid coordinate"),
            ("1\n\nQq 0 0 0\n", 3, "unknown element"),
            ("1\nLattice=\"1 0 0\"\nC 0 0 0\n", 2, "9"),
            ("1\npbc=\"T T T\"\nC 0 0 0\n", 2, "no Lattice"),
        ];
        for (text, line, needle) in cases {
            match parse(text, "bad.xyz") {
                Err(Error::Parse {
                    line: got, reason, ..
                }) => {
                    assert_eq!(got, line, "{text:?}: {reason}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
