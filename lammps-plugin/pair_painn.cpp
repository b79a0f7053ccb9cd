// pair_style painn: see pair_painn.h.

#include "pair_painn.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include "painn.h"

#include <mpi.h>

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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

constexpr int KNOWN_ELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

// Atomic number of an element symbol, 0 if unknown.
int atomic_number(const std::string &symbol)
{
  for (int z = 1; z <= KNOWN_ELEMENTS; ++z)
    if (symbol == ELEMENTS[z - 1]) return z;
  return 0;
}

// Symbol of an atomic number ("Z=N" beyond the table).
std::string element_symbol(int z)
{
  return z >= 1 && z <= KNOWN_ELEMENTS ? ELEMENTS[z - 1] : "Z=" + std::to_string(z);
}

// Reads a model file whole; on failure returns why (naming the file), else "".
std::string read_model_file(const std::string &path, std::vector<char> &bytes)
{
  const std::string quoted = "the model file '" + path + "'";
  struct stat info;
  if (stat(path.c_str(), &info) != 0) return "cannot read " + quoted + ": " + strerror(errno);
  if (S_ISDIR(info.st_mode))
    return quoted + " is a directory; give the .safetensors file written by painn-convert";
  if (!S_ISREG(info.st_mode)) return quoted + " is not a regular file";
  if (info.st_size > INT_MAX)
    return quoted + " has " + std::to_string(info.st_size) +
        " bytes, more than a model file can have (2 GiB)";
  FILE *file = fopen(path.c_str(), "rb");
  if (!file) return "cannot read " + quoted + ": " + strerror(errno);
  bytes.resize(static_cast<size_t>(info.st_size));
  const size_t got = fread(bytes.data(), 1, bytes.size(), file);
  const bool failed = ferror(file) != 0;
  fclose(file);
  if (failed || got != bytes.size())
    return "cannot read " + quoted + ": read " + std::to_string(got) + " of " +
        std::to_string(bytes.size()) + " bytes";
  return "";
}

// Adds a 3x3 virial W[a][b] = sum r[a] f[b] (row-major) to LAMMPS's six components (xx yy
// zz xy xz yz). LAMMPS's box h = [[xprd, xy, xz], [0, yprd, yz], [0, 0, zprd]] has its tilts
// above the diagonal: changing the xy tilt moves each atom's x in proportion to its y, so the
// energy's derivative with respect to xy involves sum y f_x = W[1][0], and likewise xz and
// yz involve W[2][0] and W[2][1]. A trained model need not be rotation invariant and its W
// need not be symmetric: these, not W[0][1], W[0][2], W[1][2], are the components conjugate
// to LAMMPS's box, which its pressure and fix npt/nph 'tri' need.
void add_virial(const double *w, double *v)
{
  v[0] += w[0];
  v[1] += w[4];
  v[2] += w[8];
  v[3] += w[3];
  v[4] += w[6];
  v[5] += w[7];
}

// Doubles per atom in the reverse communication with newton off: forces, then the six
// per-atom virial components when they are wanted.
constexpr int REVERSE_FORCES = 3;
constexpr int REVERSE_MAX = 9;

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
  // With newton off this style returns ghost forces (and per-atom virials) to their owners
  // itself. LAMMPS sizes its communication buffers from comm_reverse_off when newton is off
  // (comm_reverse alone is then ignored): without it, a rank receiving many more ghosts than
  // it sends (one owning no atoms) overran its send buffer.
  comm_reverse = REVERSE_MAX;
  comm_reverse_off = REVERSE_MAX;
  const char *timing_variable = std::getenv("PAINN_TIMING");
  timing.on = timing_variable && std::strcmp(timing_variable, "0") != 0;
}

PairPaiNN::~PairPaiNN()
{
  if (copymode) return;
  if (timing.on && timing.evaluations > 0) {
    const double evaluations = static_cast<double>(timing.evaluations);
    std::fprintf(stderr,
                 "painn timing, rank %d: %ld evaluations, %.3f ms each; %ld exchanges, %.3f ms "
                 "each in LAMMPS communication; per evaluation %.0f owned rows sent, %.0f "
                 "ghosts\n",
                 comm->me, timing.evaluations, 1e3 * timing.evaluation_s / evaluations,
                 timing.exchanges, 1e3 * timing.exchange_s / std::max(1.0, 1.0 * timing.exchanges),
                 timing.sent_rows / evaluations, timing.ghosts / evaluations);
  }
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
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
                          [halo auto|layer|thick]
------------------------------------------------------------------------- */

void PairPaiNN::settings(int narg, char **arg)
{
  require_metal_units();
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style painn command: expected 'pair_style painn "
                      "MODEL.safetensors [device auto|cpu|cuda|cuda:N] [precision f64|f32] "
                      "[halo auto|layer|thick]'");
  model_path = arg[0];
  device = "auto";
  precision = "f32";
  halo = "auto";
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
    } else if (key == "halo") {
      if (value != "auto" && value != "layer" && value != "thick")
        error->all(FLERR, "pair_style painn: halo must be auto, layer or thick, got '{}'", value);
      halo = value;
    } else {
      error->all(FLERR, "pair_style painn: unknown keyword '{}' (device, precision, halo)", key);
    }
  }
  load_model();
  create_calculator();
}

// Rank 0 reads the file and broadcasts its bytes: one file read per run, not per rank.
void PairPaiNN::load_model()
{
  std::vector<char> bytes;
  std::string problem;
  if (comm->me == 0) problem = read_model_file(model_path, bytes);
  int length = static_cast<int>(problem.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, world);
  if (length > 0) {
    problem.resize(length);
    MPI_Bcast(&problem[0], length, MPI_CHAR, 0, world);
    error->all(FLERR, "pair_style painn: {}", problem);
  }
  int size = static_cast<int>(bytes.size());
  MPI_Bcast(&size, 1, MPI_INT, 0, world);
  bytes.resize(size);
  MPI_Bcast(bytes.data(), size, MPI_CHAR, 0, world);
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
  // The elements the model accepts (its file's list, else 1..max_z), checked by pair_coeff.
  int32_t count = 0;
  if (painn_model_element_count(model, &count) != PAINN_SUCCESS)
    error->all(FLERR, "pair_style painn: {}", painn_last_error());
  model_elements.assign(count, 0);
  for (int32_t k = 0; k < count; ++k) painn_model_element(model, k, &model_elements[k]);
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
  calculator_skin = neighbor->skin;
  constexpr int NAME = 256;
  char name[NAME] = {0};
  painn_calculator_device(calculator, name, NAME);
  opened_device = name;
  // Rank 0 reports the device every rank opened (each GPU rank should see its own).
  std::vector<char> names(comm->me == 0 ? NAME * comm->nprocs : 1);
  MPI_Gather(name, NAME, MPI_CHAR, names.data(), NAME, MPI_CHAR, 0, world);
  if (comm->me == 0)
    for (int rank = 0; rank < comm->nprocs; ++rank)
      utils::logmesg(lmp, "pair_style painn: rank {} uses {} ({}, skin {} Angstrom)\n", rank,
                     &names[NAME * rank], precision, calculator_skin);
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
    if (!std::binary_search(model_elements.begin(), model_elements.end(), z)) {
      std::string known;
      for (int element : model_elements) known += " " + element_symbol(element);
      error->all(FLERR,
                 "pair_coeff for painn: element {} (atom type {}) is not one of the elements of "
                 "the model '{}' (it was trained on:{})",
                 symbol, i, model_path, known);
    }
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
  // The engine's own list uses LAMMPS's skin: a `neighbor` command after `pair_style` (as in
  // most inputs) changes it, and only now is it final.
  if (neighbor->skin != calculator_skin) create_calculator();
  // No neighbour list request: the engine builds its own graph from the positions (owned
  // atoms and the box on one rank, owned + ghost atoms on several) and never reads `list`,
  // so a LAMMPS list would be built at every re-neighbouring for nothing. LAMMPS still
  // re-neighbours as `neighbor`/`neigh_modify` say (migration, ghosts, sorting: Neighbor's
  // distance check needs no list), and the ghost cutoff still comes from cutforce
  // (init_one) + skin, or the larger comm->cutghostuser set below: Neighbor::init takes
  // cutneighmax from the pair style's cutsq, not from the requests.
  // Several ranks: with the per-layer exchange (halo layer, the CPU's default) ghosts are
  // needed one cutoff + skin deep, LAMMPS's own ghost cutoff; with the thick halo (a GPU's
  // default: there each exchange goes through host memory, measured slower than evaluating
  // the thick shell) an atom's energy depends on atoms up to `layers` cutoffs away, so the
  // shell must hold them all.
  const bool on_gpu = opened_device.rfind("cpu", 0) != 0;
  layer_halo = comm->nprocs > 1 && (halo == "layer" || (halo == "auto" && !on_gpu));
  if (layer_halo) {
    if (painn_model_exchange_width(model, &exchange_width) != PAINN_SUCCESS)
      error->all(FLERR, "pair_style painn: {}", painn_last_error());
    // precision f32: the rows hold float32 values and travel as floats (exchange_comm_width).
    exchange_as_float = precision == "f32";
    // LAMMPS sizes its communication buffers from these before the run.
    comm_forward = exchange_width;
    comm_reverse = comm_reverse_off = std::max(exchange_width, REVERSE_MAX);
  } else {
    comm_forward = 0;
    comm_reverse = comm_reverse_off = REVERSE_MAX;
  }
  if (comm->nprocs > 1 && !layer_halo) {
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
  if (layer_halo && on_gpu && comm->me == 0)
    utils::logmesg(lmp, "pair_style painn: halo layer on a GPU copies each exchange through "
                        "host memory; with ranks sharing a GPU it measured 2-6x slower than "
                        "halo thick (docs/design.md)\n");
  if (comm->nprocs > 1 && comm->me == 0)
    utils::logmesg(lmp, "pair_style painn: {} halo ({})\n", layer_halo ? "layer" : "thick",
                   layer_halo ? "ghost features exchanged after each layer, ghost cutoff "
                                "cutoff + skin"
                              : "every rank evaluates its ghosts, ghost cutoff layers x cutoff "
                                "+ skin");
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

void PairPaiNN::setup()
{
  // The timing starts after the first evaluation of a run that is set up.
  const bool on = timing.on;
  timing = Timing();
  timing.on = on;
  timing.skip_next = true;
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

  timing.timed = timing.on && !timing.skip_next;
  timing.skip_next = false;
  const double started = MPI_Wtime();
  painn_status_t status;
  if (single_rank) {
    const double *h = domain->h;    // xprd yprd zprd yz xz xy
    const double cell[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
    const int32_t pbc[3] = {domain->xperiodic, domain->yperiodic, domain->zperiodic};
    status = painn_compute(calculator, n, numbers.data(), positions.data(), cell, pbc, &energy,
                           forces.data(), w, want_energies ? energies.data() : nullptr,
                           want_atom_virials ? atom_virials.data() : nullptr);
  } else if (layer_halo) {
    collect_sent_rows(owned);
    painn_ghost_exchange_t exchange_functions = {this, exchange_forward, exchange_reverse,
                                                 sent_rows.data(),
                                                 static_cast<int64_t>(sent_rows.size())};
    status = painn_compute_exchanging(calculator, n, owned, numbers.data(), positions.data(),
                                      &exchange_functions, &energy, forces.data(), w,
                                      want_energies ? energies.data() : nullptr,
                                      want_atom_virials ? atom_virials.data() : nullptr);
  } else {
    status = painn_compute_local(calculator, n, owned, numbers.data(), positions.data(), &energy,
                                 forces.data(), w, want_energies ? energies.data() : nullptr,
                                 want_atom_virials ? atom_virials.data() : nullptr);
  }
  if (status != PAINN_SUCCESS)
    error->one(FLERR, "pair_style painn: step {}: {}", update->ntimestep, painn_last_error());
  if (timing.timed) {
    timing.evaluation_s += MPI_Wtime() - started;
    timing.evaluations += 1;
    timing.sent_rows += layer_halo ? static_cast<double>(sent_rows.size()) : 0.0;
    timing.ghosts += n - owned;
  }
  if (!single_rank && !layer_halo && !ghosts_checked) warn_about_ghosts(owned, n - owned);

  if (eflag_global) eng_vdwl += energy;
  if (eflag_atom)
    for (int k = 0; k < owned; ++k) eatom[lammps_index[k]] += energies[k];
  if (vflag_global) add_virial(w, virial);

  if (single_rank || force->newton_pair) {
    // Ghost forces (several ranks) are summed into their owners by LAMMPS (newton on), and
    // ghost per-atom virials by compute stress/atom.
    for (int k = 0; k < n; ++k) {
      const int i = lammps_index[k];
      for (int d = 0; d < 3; ++d) f[i][d] += forces[3 * k + d];
      if (vflag_atom) add_virial(&atom_virials[9 * static_cast<size_t>(k)], vatom[i]);
    }
    return;
  }
  // newton off: LAMMPS returns neither ghost forces nor ghost per-atom virials to their
  // owners, so this style does (reverse communication of both).
  reverse_size = vflag_atom ? REVERSE_MAX : REVERSE_FORCES;
  reverse.assign(reverse_size * static_cast<size_t>(nall), 0.0);
  for (int k = 0; k < n; ++k) {
    double *r = &reverse[reverse_size * static_cast<size_t>(lammps_index[k])];
    for (int d = 0; d < 3; ++d) r[d] = forces[3 * k + d];
    if (vflag_atom) add_virial(&atom_virials[9 * static_cast<size_t>(k)], r + 3);
  }
  comm->reverse_comm(this);
  for (int i = 0; i < nlocal; ++i) {
    const double *r = &reverse[reverse_size * static_cast<size_t>(i)];
    for (int d = 0; d < 3; ++d) f[i][d] += r[d];
    if (vflag_atom)
      for (int c = 0; c < 6; ++c) vatom[i][c] += r[3 + c];
  }
}

/* The engine's ghost exchange through LAMMPS's communication. Every rank makes the same
   exchanges in the same order (one per layer boundary), as LAMMPS's collective
   communication requires. */
int PairPaiNN::exchange(double *rows, int64_t, int64_t width, bool reverse_direction)
{
  if (width <= 0 || width > exchange_width) return 1;
  try {
    exchange_rows = rows;
    exchange_row_width = static_cast<int>(width);
    const double started = MPI_Wtime();
    if (reverse_direction)
      comm->reverse_comm(this, exchange_comm_width());
    else
      comm->forward_comm(this, exchange_comm_width());
    if (timing.timed) {
      timing.exchange_s += MPI_Wtime() - started;
      timing.exchanges += 1;
    }
  } catch (...) {
    exchange_rows = nullptr;
    return 2;
  }
  exchange_rows = nullptr;
  return 0;
}

int32_t PairPaiNN::exchange_forward(void *context, double *rows, int64_t n, int64_t width)
{
  return static_cast<PairPaiNN *>(context)->exchange(rows, n, width, false);
}

int32_t PairPaiNN::exchange_reverse(void *context, double *rows, int64_t n, int64_t width)
{
  return static_cast<PairPaiNN *>(context)->exchange(rows, n, width, true);
}

/* Doubles one exchange row takes in LAMMPS's buffers. With precision f32 the engine's rows
   hold float32 values (in doubles), so they travel as floats, two per double: half the
   bytes. Nothing is rounded but, in the reverse direction, a partial sum that LAMMPS routes
   through another ghost (corner atoms), rounded to float32, the engine's own precision. */
int PairPaiNN::exchange_comm_width() const
{
  return exchange_as_float ? (exchange_row_width + 1) / 2 : exchange_row_width;
}

// The exchange row of LAMMPS atom `i` into `to` (zeros for an atom of a NULL type), packed
// as exchange_comm_width() doubles.
void PairPaiNN::copy_exchange_row(int i, double *to) const
{
  const int width = exchange_row_width;
  const int row = engine_index[i];
  if (row < 0) {
    std::fill(to, to + exchange_comm_width(), 0.0);
    return;
  }
  const double *from = exchange_rows + static_cast<size_t>(width) * row;
  if (!exchange_as_float) {
    std::copy_n(from, width, to);
    return;
  }
  std::vector<float> &packed = exchange_floats;
  packed.assign(2 * static_cast<size_t>(exchange_comm_width()), 0.0f);
  for (int c = 0; c < width; ++c) packed[c] = static_cast<float>(from[c]);
  std::memcpy(to, packed.data(), sizeof(double) * exchange_comm_width());
}

// One row of a LAMMPS buffer (exchange_comm_width() doubles) as the engine's doubles.
void PairPaiNN::read_exchange_row(const double *from, double *row) const
{
  const int width = exchange_row_width;
  if (!exchange_as_float) {
    std::copy_n(from, width, row);
    return;
  }
  std::vector<float> &packed = exchange_floats;
  packed.resize(2 * static_cast<size_t>(exchange_comm_width()));
  std::memcpy(packed.data(), from, sizeof(double) * exchange_comm_width());
  for (int c = 0; c < width; ++c) row[c] = packed[c];
}

/* The owned rows LAMMPS's forward communication reads (its send lists, periodic images on
   this rank included): one forward communication of a marker per atom. The engine then
   moves only these rows and the ghost rows between a GPU and the host. */
void PairPaiNN::collect_sent_rows(int owned)
{
  sent_marks.assign(owned, 0);
  collecting_sent_rows = true;
  comm->forward_comm(this, 1);
  collecting_sent_rows = false;
  sent_rows.clear();
  for (int k = 0; k < owned; ++k)
    if (sent_marks[k]) sent_rows.push_back(k);
}

// Forward: the rows of the atoms in `list` (owners, or ghosts filled in an earlier swap).
int PairPaiNN::pack_forward_comm(int n, int *list, double *buffer, int, int *)
{
  if (collecting_sent_rows) {
    for (int k = 0; k < n; ++k) {
      const int i = list[k];
      if (i < atom->nlocal && engine_index[i] >= 0) sent_marks[engine_index[i]] = 1;
      buffer[k] = 0.0;
    }
    return n;
  }
  const int comm_width = exchange_comm_width();
  for (int k = 0; k < n; ++k) copy_exchange_row(list[k], buffer + static_cast<size_t>(comm_width) * k);
  return comm_width * n;
}

void PairPaiNN::unpack_forward_comm(int n, int first, double *buffer)
{
  if (collecting_sent_rows) return;
  const int width = exchange_row_width, comm_width = exchange_comm_width();
  for (int k = 0; k < n; ++k) {
    const int row = engine_index[first + k];
    if (row >= 0)
      read_exchange_row(buffer + static_cast<size_t>(comm_width) * k,
                        exchange_rows + static_cast<size_t>(width) * row);
  }
}

int PairPaiNN::pack_reverse_comm(int n, int first, double *buffer)
{
  if (exchange_rows) {
    // Exchange: the ghost rows first..first+n, to be added into their owners.
    const int comm_width = exchange_comm_width();
    for (int k = 0; k < n; ++k) copy_exchange_row(first + k, buffer + static_cast<size_t>(comm_width) * k);
    return comm_width * n;
  }
  const double *from = reverse.data() + reverse_size * static_cast<size_t>(first);
  std::copy(from, from + reverse_size * static_cast<size_t>(n), buffer);
  return reverse_size * n;
}

void PairPaiNN::unpack_reverse_comm(int n, int *list, double *buffer)
{
  if (exchange_rows) {
    const int width = exchange_row_width, comm_width = exchange_comm_width();
    exchange_scratch.resize(width);
    for (int k = 0; k < n; ++k) {
      const int row = engine_index[list[k]];
      if (row < 0) continue;
      read_exchange_row(buffer + static_cast<size_t>(comm_width) * k, exchange_scratch.data());
      double *to = exchange_rows + static_cast<size_t>(width) * row;
      for (int c = 0; c < width; ++c) to[c] += exchange_scratch[c];
    }
    return;
  }
  for (int k = 0; k < n; ++k) {
    double *to = reverse.data() + reverse_size * static_cast<size_t>(list[k]);
    for (int c = 0; c < reverse_size; ++c) to[c] += buffer[reverse_size * k + c];
  }
}

double PairPaiNN::memory_usage()
{
  return sizeof(double) * (positions.capacity() + forces.capacity() + energies.capacity() +
                           atom_virials.capacity() + reverse.capacity());
}
