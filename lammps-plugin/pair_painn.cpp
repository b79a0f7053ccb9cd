// pair_style painn: see pair_painn.h.

#include "pair_painn.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include "painn.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>

using namespace LAMMPS_NS;

namespace {

const char *const ELEMENTS[] = {
    "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};

// Atomic number of an element symbol, 0 if unknown.
int atomic_number(const std::string &symbol)
{
  const int n = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);
  for (int z = 1; z <= n; ++z)
    if (symbol == ELEMENTS[z - 1]) return z;
  return 0;
}

}    // namespace

PairPaiNN::PairPaiNN(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;    // a many-body model has no pairwise decomposition
  restartinfo = 0;      // the model file is read again, nothing goes to restart files
  one_coeff = 1;        // exactly one "pair_coeff * * ..."
  manybody_flag = 1;
  // The engine returns the virial itself (r_ij x f_ij over its edges, on every rank).
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  comm_reverse = 3;
}

PairPaiNN::~PairPaiNN()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
  memory->destroy(reverse_forces);
  painn_calculator_free(calculator);
  painn_model_free(model);
}

void PairPaiNN::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
  type_z.assign(n, 0);
}

void PairPaiNN::require_metal_units() const
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "Pair style painn requires 'units metal' (eV, Angstrom, eV/Angstrom); the current "
               "units are '{}'",
               update->unit_style);
}

/* ----------------------------------------------------------------------
   pair_style painn MODEL [device auto|cpu|cuda|cuda:N] [precision f64|f32]
------------------------------------------------------------------------- */

void PairPaiNN::settings(int narg, char **arg)
{
  require_metal_units();
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style painn command: expected 'pair_style painn "
                      "MODEL.safetensors [device auto|cpu|cuda|cuda:N] [precision f64|f32]'");
  model_path = arg[0];
  device = "auto";
  precision = "f32";
  for (int iarg = 1; iarg < narg; iarg += 2) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg) error->all(FLERR, "pair_style painn: keyword '{}' needs a value", key);
    const std::string value = arg[iarg + 1];
    if (key == "device") {
      device = value;
    } else if (key == "precision") {
      if (value != "f64" && value != "f32")
        error->all(FLERR, "pair_style painn: precision must be f64 or f32, got '{}'", value);
      precision = value;
    } else {
      error->all(FLERR, "pair_style painn: unknown keyword '{}' (device, precision)", key);
    }
  }
  load_model();
  create_calculator();
}

// Rank 0 reads the file and broadcasts its bytes: one file read per run, not per rank.
void PairPaiNN::load_model()
{
  std::vector<char> bytes;
  long long size = -1;
  if (comm->me == 0) {
    std::ifstream file(model_path, std::ios::binary);
    if (file) {
      bytes.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
      size = static_cast<long long>(bytes.size());
    }
  }
  MPI_Bcast(&size, 1, MPI_LONG_LONG, 0, world);
  if (size < 0)
    error->all(FLERR, "pair_style painn: cannot read the model file '{}': {}", model_path,
               utils::getsyserror());
  bytes.resize(size);
  MPI_Bcast(bytes.data(), static_cast<int>(size), MPI_CHAR, 0, world);
  painn_model_free(model);
  model = nullptr;
  if (painn_model_load_buffer(reinterpret_cast<const uint8_t *>(bytes.data()), bytes.size(),
                              model_path.c_str(), &model) != PAINN_SUCCESS)
    error->all(FLERR, "pair_style painn: {}", painn_last_error());
  int32_t value = 0;
  painn_model_cutoff(model, &cutoff);
  painn_model_layers(model, &value);
  layers = value;
  painn_model_max_z(model, &value);
  max_z = value;
}

// Each rank opens its device; with several GPUs on a node, rank k of the node takes GPU
// k modulo their number unless `device cuda:N` names one.
void PairPaiNN::create_calculator()
{
  std::string chosen = device;
  if (device == "auto" || device == "cuda") {
    int32_t gpus = 0;
    painn_cuda_device_count(&gpus);
    if (gpus > 0) {
      MPI_Comm node;
      MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
      int local_rank = 0;
      MPI_Comm_rank(node, &local_rank);
      MPI_Comm_free(&node);
      chosen = "cuda:" + std::to_string(local_rank % gpus);
    } else if (device == "cuda") {
      error->one(FLERR, "pair_style painn: device cuda requested but no CUDA GPU is usable");
    } else {
      chosen = "cpu";
    }
  }
  if (chosen != "cpu" && precision == "f64")
    error->all(FLERR, "pair_style painn: the GPU computes in f32; use 'precision f32' or "
                      "'device cpu'");
  painn_calculator_free(calculator);
  calculator = nullptr;
  if (painn_calculator_create(model, chosen.c_str(), precision.c_str(), neighbor->skin,
                              &calculator) != PAINN_SUCCESS)
    error->one(FLERR, "pair_style painn: cannot use device '{}': {}", chosen, painn_last_error());
  constexpr int NAME = 256;
  char name[NAME] = {0};
  painn_calculator_device(calculator, name, NAME);
  opened_device = name;
  // Rank 0 reports the device every rank opened (each GPU rank should see its own).
  std::vector<char> names(comm->me == 0 ? NAME * comm->nprocs : 1);
  MPI_Gather(name, NAME, MPI_CHAR, names.data(), NAME, MPI_CHAR, 0, world);
  if (comm->me == 0)
    for (int rank = 0; rank < comm->nprocs; ++rank)
      utils::logmesg(lmp, "pair_style painn: rank {} uses {} ({})\n", rank, &names[NAME * rank],
                     precision);
}

/* ----------------------------------------------------------------------
   pair_coeff * * El_1 ... El_ntypes    (NULL = a type painn does not handle)
------------------------------------------------------------------------- */

void PairPaiNN::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff for painn needs '* *' and one element (or NULL) per atom type: "
               "{} types, {} given",
               ntypes, narg - 2);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for painn must start with '* *'");
  for (int i = 1; i <= ntypes; ++i) {
    const std::string symbol = arg[1 + i];
    if (symbol == "NULL") {
      // Only a hybrid style can hand a type to another potential.
      if (force->pair == this)
        error->all(FLERR,
                   "pair_coeff for painn: atom type {} has no element (NULL); only "
                   "pair_style hybrid or hybrid/overlay may leave a type to another style",
                   i);
      type_z[i] = 0;
      continue;
    }
    const int z = atomic_number(symbol);
    if (z == 0)
      error->all(FLERR, "pair_coeff for painn: '{}' (atom type {}) is not an element symbol",
                 symbol, i);
    if (z > max_z)
      error->all(FLERR,
                 "pair_coeff for painn: element {} (atom type {}) is beyond the model's range "
                 "(atomic numbers 1 to {})",
                 symbol, i, max_z);
    type_z[i] = z;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) {
      const int on = (type_z[i] > 0 && type_z[j] > 0) ? 1 : 0;
      setflag[i][j] = setflag[j][i] = on;
      count += on;
    }
  if (count == 0) error->all(FLERR, "pair_coeff for painn: every atom type is NULL");
}

void PairPaiNN::init_style()
{
  require_metal_units();
  ghosts_checked = false;
  if (!model) error->all(FLERR, "pair_style painn: no model (pair_style painn MODEL ...)");
  // The engine builds its own graph, but the request is explicit: a full list, so that
  // LAMMPS knows this style needs neighbours of every atom within the cutoff.
  neighbor->add_request(this, NeighConst::REQ_FULL);
  if (comm->nprocs > 1) {
    // An atom's energy depends on atoms up to `layers` cutoffs away: the ghost shell must
    // hold them all (plus the skin, for the steps between re-neighbourings).
    const double need = layers * cutoff + neighbor->skin;
    if (comm->get_comm_cutoff() < need) {
      comm->cutghostuser = need;
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair_style painn: ghost cutoff set to {} Angstrom ({} layers x {} + skin "
                       "{}), as 'comm_modify cutoff {}' would\n",
                       need, layers, cutoff, neighbor->skin, need);
    }
  }
}

/* Several ranks evaluate the model on their ghost atoms too (the shell of layers x cutoff +
   skin): once per run, say so when the ghosts outnumber the owned atoms several times over,
   since fewer ranks are then faster. */
void PairPaiNN::warn_about_ghosts(int owned, int ghosts)
{
  ghosts_checked = true;
  const double local[2] = {static_cast<double>(owned), static_cast<double>(ghosts)};
  double total[2] = {0.0, 0.0};
  MPI_Allreduce(local, total, 2, MPI_DOUBLE, MPI_SUM, world);
  constexpr double GHOSTS_PER_OWNED = 4.0;
  if (comm->me == 0 && total[1] > GHOSTS_PER_OWNED * total[0])
    error->warning(FLERR,
                   "pair_style painn: the {} ranks evaluate {:.0f} ghost atoms for {:.0f} owned "
                   "ones ({:.1f} per owned atom, in a ghost shell of {} layers x cutoff + skin): "
                   "for a system this small, fewer ranks are faster",
                   comm->nprocs, total[1], total[0], total[1] / std::max(total[0], 1.0), layers);
}

double PairPaiNN::init_one(int, int)
{
  return cutoff;
}

/* ---------------------------------------------------------------------- */

void PairPaiNN::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const bool single_rank = comm->nprocs == 1;
  // One rank: owned atoms and the periodic box. Several: owned + ghost atoms, open.
  const int nused = single_rank ? nlocal : nall;
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;

  engine_index.assign(nused, -1);
  lammps_index.clear();
  numbers.clear();
  positions.clear();
  int owned = 0;
  for (int pass = 0; pass < 2; ++pass) {
    // Owned atoms first, then ghosts (the engine counts the first n_owned).
    const int begin = pass == 0 ? 0 : nlocal, end = pass == 0 ? nlocal : nused;
    for (int i = begin; i < end; ++i) {
      const int z = type_z[type[i]];
      if (z == 0) continue;
      engine_index[i] = static_cast<int>(lammps_index.size());
      lammps_index.push_back(i);
      numbers.push_back(z);
      positions.insert(positions.end(), {x[i][0], x[i][1], x[i][2]});
    }
    if (pass == 0) owned = static_cast<int>(lammps_index.size());
  }
  const int n = static_cast<int>(lammps_index.size());
  forces.assign(3 * static_cast<size_t>(n), 0.0);
  const bool want_energies = eflag_atom != 0;
  const bool want_atom_virials = vflag_atom != 0;
  energies.assign(want_energies ? n : 0, 0.0);
  atom_virials.assign(want_atom_virials ? 9 * static_cast<size_t>(n) : 0, 0.0);
  double energy = 0.0, w[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};

  painn_status_t status;
  if (single_rank) {
    const double *h = domain->h;    // xprd yprd zprd yz xz xy
    const double cell[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
    const int32_t pbc[3] = {domain->xperiodic, domain->yperiodic, domain->zperiodic};
    status = painn_compute(calculator, n, numbers.data(), positions.data(), cell, pbc, &energy,
                           forces.data(), w, want_energies ? energies.data() : nullptr,
                           want_atom_virials ? atom_virials.data() : nullptr);
  } else {
    status = painn_compute_local(calculator, n, owned, numbers.data(), positions.data(), &energy,
                                 forces.data(), w, want_energies ? energies.data() : nullptr,
                                 want_atom_virials ? atom_virials.data() : nullptr);
  }
  if (status != PAINN_SUCCESS)
    error->one(FLERR, "pair_style painn: step {}: {}", update->ntimestep, painn_last_error());
  if (!single_rank && !ghosts_checked) warn_about_ghosts(owned, n - owned);

  if (single_rank || force->newton_pair) {
    // Ghost forces (several ranks) are summed into their owners by LAMMPS (newton on).
    for (int k = 0; k < n; ++k) {
      const int i = lammps_index[k];
      for (int d = 0; d < 3; ++d) f[i][d] += forces[3 * k + d];
    }
  } else {
    // newton off: LAMMPS does not return ghost forces, so this style does.
    if (reverse_capacity < nall) {
      memory->destroy(reverse_forces);
      reverse_capacity = atom->nmax;
      memory->create(reverse_forces, 3 * reverse_capacity, "pair:reverse_forces");
    }
    for (int i = 0; i < nall; ++i)
      for (int d = 0; d < 3; ++d) reverse_forces[3 * i + d] = 0.0;
    for (int k = 0; k < n; ++k)
      for (int d = 0; d < 3; ++d) reverse_forces[3 * lammps_index[k] + d] = forces[3 * k + d];
    comm->reverse_comm(this);
    for (int i = 0; i < nlocal; ++i)
      for (int d = 0; d < 3; ++d) f[i][d] += reverse_forces[3 * i + d];
  }

  if (eflag_global) eng_vdwl += energy;
  if (eflag_atom)
    for (int k = 0; k < owned; ++k) eatom[lammps_index[k]] += energies[k];
  if (vflag_global) {
    // LAMMPS order xx yy zz xy xz yz of W[a][b] = sum r_ij[a] f_ij[b].
    virial[0] += w[0];
    virial[1] += w[4];
    virial[2] += w[8];
    virial[3] += w[1];
    virial[4] += w[2];
    virial[5] += w[5];
  }
  if (vflag_atom) {
    // Ghost entries are summed into owners by compute stress/atom (newton on).
    for (int k = 0; k < n; ++k) {
      const int i = lammps_index[k];
      const double *a = &atom_virials[9 * static_cast<size_t>(k)];
      vatom[i][0] += a[0];
      vatom[i][1] += a[4];
      vatom[i][2] += a[8];
      vatom[i][3] += a[1];
      vatom[i][4] += a[2];
      vatom[i][5] += a[5];
    }
  }
}

int PairPaiNN::pack_reverse_comm(int n, int first, double *buffer)
{
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int d = 0; d < 3; ++d) buffer[m++] = reverse_forces[3 * i + d];
  return m;
}

void PairPaiNN::unpack_reverse_comm(int n, int *list, double *buffer)
{
  int m = 0;
  for (int k = 0; k < n; ++k)
    for (int d = 0; d < 3; ++d) reverse_forces[3 * list[k] + d] += buffer[m++];
}

double PairPaiNN::memory_usage()
{
  return sizeof(double) * (positions.capacity() + forces.capacity() + energies.capacity() +
                           atom_virials.capacity() + 3.0 * reverse_capacity);
}
