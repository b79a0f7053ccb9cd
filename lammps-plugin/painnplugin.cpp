// Plugin entry point: `plugin load painnplugin.so` registers pair_style painn.

#include "painn_plugin_abi.h"
#include "pair_painn.h"

#include "comm.h"
#include "lammps.h"
#include "utils.h"

#include <mpi.h>

#include <cstring>
#include <string>

using namespace LAMMPS_NS;

#ifndef PAINN_LAMMPS_VERSION_STRING
#define PAINN_LAMMPS_VERSION_STRING "unknown"
#endif

namespace {

Pair *create_pair_painn(LAMMPS *lmp)
{
  return new PairPaiNN(lmp);
}

// The plugin is compiled against one MPI's mpi.h; the host process has one
// libmpi loaded. Report a mismatch early instead of crashing in a collective.
void check_mpi(LAMMPS *lmp)
{
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  const std::string runtime(lib, len);
#if defined(MPICH_VERSION)
  const bool ok = runtime.find("MPICH") != std::string::npos &&
      runtime.find(MPICH_VERSION) != std::string::npos;
  const char *compiled = "MPICH " MPICH_VERSION;
#elif defined(OMPI_MAJOR_VERSION)
  const bool ok = runtime.find("Open MPI") != std::string::npos;
  const char *compiled = "Open MPI";
#else
  const bool ok = true;
  const char *compiled = "unknown MPI";
#endif
  if (!ok && lmp->comm->me == 0)
    utils::logmesg(lmp, "WARNING: painn plugin was compiled against {} but runs with: {}\n",
                   compiled, runtime.substr(0, runtime.find('\n')));
}

}    // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                                          void *regfunc)
{
  check_mpi(static_cast<LAMMPS *>(lmp));

  painn_lmp_plugin_t plugin;
  std::memset(&plugin, 0, sizeof(plugin));
  plugin.version = PAINN_LAMMPS_VERSION_STRING;
  plugin.style = "pair";
  plugin.name = "painn";
  plugin.info = "PaiNN machine-learned potential (painn engine) v0.1";
  plugin.author = "painn developers";
  plugin.creator.v1 = reinterpret_cast<painn_lmp_factory1 *>(&create_pair_painn);
  plugin.handle = handle;
  reinterpret_cast<painn_lmp_register_fn>(regfunc)(&plugin, lmp);
}
