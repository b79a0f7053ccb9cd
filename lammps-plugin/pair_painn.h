// pair_style painn: PaiNN machine-learned force fields evaluated by the painn engine
// (libpainn.a, C ABI in include/painn.h).
//
//   pair_style painn MODEL.safetensors [device auto|cpu|cuda|cuda:N] [precision f64|f32]
//                    [halo auto|layer|thick]
//   pair_coeff * * El_1 El_2 ... El_ntypes      (NULL for types painn does not handle)
//
// Units must be metal (eV, Angstrom). On one MPI rank the engine builds its own periodic
// graph from the owned atoms and the box (ghost atoms unused). On several ranks it evaluates
// owned + ghost atoms without periodicity: with `halo layer` the ghost rows of each layer's
// features come from their owners through LAMMPS's forward/reverse communication (ghost
// shell cutoff + skin, only owned atoms computed); with `halo thick` the ghost shell is
// raised to layers x cutoff + skin and ghosts are evaluated too. Only owned atoms' energies
// count and ghost forces (and per-atom virials) go back to their owners, with newton on or
// off. The virial's off-diagonal components are the ones
// conjugate to LAMMPS's box tilts (xy: sum y f_x; see add_virial in pair_painn.cpp).
// The style requests no LAMMPS neighbour list (see init_style): LAMMPS builds none, but still
// re-neighbours (migration, ghosts) as `neighbor`/`neigh_modify` say. With PAINN_TIMING=1 in
// the environment every rank prints its evaluation and exchange times when the style is
// deleted.
#ifndef PAINN_PAIR_PAINN_H
#define PAINN_PAIR_PAINN_H

#include "pair.h"

#include <string>
#include <vector>

struct painn_model_t;
struct painn_calculator_t;

namespace LAMMPS_NS {

class PairPaiNN : public Pair {
 public:
  explicit PairPaiNN(class LAMMPS *);
  ~PairPaiNN() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  void setup() override;
  double init_one(int, int) override;
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  // One ghost exchange of the engine (painn_compute_exchanging), through LAMMPS's
  // forward (fill ghosts) or reverse (add ghosts into owners) communication; 0 on success.
  int exchange(double *rows, int64_t n_rows, int64_t width, bool reverse);
  static int32_t exchange_forward(void *context, double *rows, int64_t n, int64_t width);
  static int32_t exchange_reverse(void *context, double *rows, int64_t n, int64_t width);
  int exchange_comm_width() const;
  void copy_exchange_row(int i, double *to) const;
  void read_exchange_row(const double *from, double *row) const;
  void collect_sent_rows(int owned);
  double memory_usage() override;

 protected:
  void allocate();
  void require_metal_units() const;
  void warn_about_ghosts(int owned, int ghosts);
  void load_model();
  void create_calculator();

  std::string model_path;
  std::string device = "auto";
  std::string precision = "f32";
  std::string halo = "auto";    // layer, thick, or auto (layer on the CPU, thick on a GPU)
  bool layer_halo = false;      // this run exchanges ghost features after each layer
  int exchange_width = 0;       // the model's exchange row width (4 H)
  double *exchange_rows = nullptr;    // during an exchange: the engine's rows [n][width]
  int exchange_row_width = 0;
  bool exchange_as_float = false;    // precision f32: rows travel as floats, two per double
  std::vector<double> exchange_scratch;
  mutable std::vector<float> exchange_floats;
  // The owned engine rows LAMMPS's send lists read, ascending (collect_sent_rows).
  bool collecting_sent_rows = false;
  std::vector<char> sent_marks;
  std::vector<int64_t> sent_rows;

  painn_model_t *model = nullptr;
  painn_calculator_t *calculator = nullptr;
  std::string opened_device;    // what the calculator actually runs on
  double calculator_skin = -1;  // the neighbour-list skin the calculator was made with
  double cutoff = 0.0;          // model cutoff, Angstrom
  int layers = 0;               // message-passing layers
  int max_z = 0;

  // Per LAMMPS atom type (1..ntypes): atomic number, 0 for NULL.
  std::vector<int> type_z;

  // Engine inputs and outputs, reused between steps.
  std::vector<int> engine_index;    // LAMMPS atom -> engine atom (-1: NULL type)
  std::vector<int> lammps_index;    // engine atom -> LAMMPS atom
  std::vector<int32_t> numbers;
  std::vector<double> positions, forces, energies, atom_virials;
  // newton off: [nall][reverse_size] ghost forces (and per-atom virials) sent to owners.
  std::vector<double> reverse;
  int reverse_size = 3;
  std::vector<int32_t> model_elements;    // atomic numbers the model accepts, ascending
  bool ghosts_checked = false;    // warn_about_ghosts ran in this run

  // PAINN_TIMING=1: wall time of the evaluations and of the exchanges' LAMMPS communication,
  // from the second evaluation of a run set up on (the first builds and records), printed
  // by every rank when the style is deleted.
  struct Timing {
    bool on = false;
    bool skip_next = false;
    bool timed = false;    // the evaluation under way is timed
    long evaluations = 0, exchanges = 0;
    double evaluation_s = 0.0, exchange_s = 0.0;
    double sent_rows = 0.0, ghosts = 0.0;
  } timing;
};

}    // namespace LAMMPS_NS

#endif
