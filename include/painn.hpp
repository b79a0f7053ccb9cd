// painn: header-only C++17 wrapper over the C ABI (painn.h). RAII handles; failures throw
// painn::Error carrying the library's message and status code.
//
// A complete program (a water molecule in a periodic 12 A box):
//
//     #include <cstdio>
//     #include "painn.hpp"
//
//     int main() {
//         try {
//             painn::Model model("student.safetensors");
//             painn::Calculator calculator(model, "auto", "f32");
//             std::vector<int32_t> atomic_numbers = {8, 1, 1};
//             std::vector<double> positions = {0.0, 0.0, 0.0, 0.9572, 0.0, 0.0, -0.24, 0.9266, 0.0};
//             double cell[9] = {12.0, 0.0, 0.0, 0.0, 12.0, 0.0, 0.0, 0.0, 12.0};  // rows
//             painn::Results r = calculator.compute(atomic_numbers, positions, cell, {true, true, true});
//             std::printf("energy %.6f eV\n", r.energy);
//         } catch (const painn::Error& error) {
//             std::fprintf(stderr, "painn: %s\n", error.what());
//             return 1;
//         }
//     }
//
// Threads: a Model may be shared by any number of threads and calculators; a Calculator
// must be used by one thread at a time: a call that overlaps another on the same Calculator
// throws painn::Error (PAINN_INVALID_ARGUMENT, "in use by another thread") and computes
// nothing.
#ifndef PAINN_HPP
#define PAINN_HPP

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "painn.h"

namespace painn {

/// A failed painn call: what() is the library's message, status() its code.
class Error : public std::runtime_error {
public:
    Error(painn_status_t status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    painn_status_t status() const noexcept { return status_; }

private:
    painn_status_t status_;
};

namespace detail {
inline void check(painn_status_t status) {
    if (status != PAINN_SUCCESS) {
        throw Error(status, painn_last_error());
    }
}
}  // namespace detail

/// Library version, "major.minor.patch".
inline std::string version() { return painn_version(); }

/// A loaded model (immutable; copies share it).
class Model {
public:
    /// Loads a model file (.safetensors from painn-convert).
    explicit Model(const std::string& path) {
        painn_model_t* raw = nullptr;
        detail::check(painn_model_load(path.c_str(), &raw));
        model_.reset(raw, painn_model_free);
    }

    /// Loads a model from the bytes of a model file.
    static Model from_buffer(const void* data, std::size_t size, const std::string& name = "buffer") {
        painn_model_t* raw = nullptr;
        detail::check(painn_model_load_buffer(static_cast<const uint8_t*>(data), size, name.c_str(), &raw));
        return Model(raw);
    }

    /// Interaction cutoff, Angstrom.
    double cutoff() const {
        double value = 0.0;
        detail::check(painn_model_cutoff(model_.get(), &value));
        return value;
    }

    /// Interaction layers (an atom's energy reaches layers() cutoffs away).
    int layers() const {
        int32_t value = 0;
        detail::check(painn_model_layers(model_.get(), &value));
        return value;
    }

    /// Largest atomic number the model accepts.
    int max_z() const {
        int32_t value = 0;
        detail::check(painn_model_max_z(model_.get(), &value));
        return value;
    }

    /// Atomic numbers the model accepts, ascending (its file's element list, else 1..max_z).
    std::vector<int> elements() const {
        int32_t count = 0;
        detail::check(painn_model_element_count(model_.get(), &count));
        std::vector<int> numbers(static_cast<std::size_t>(count));
        for (int32_t index = 0; index < count; ++index) {
            int32_t number = 0;
            detail::check(painn_model_element(model_.get(), index, &number));
            numbers[static_cast<std::size_t>(index)] = number;
        }
        return numbers;
    }

    const painn_model_t* get() const noexcept { return model_.get(); }

private:
    explicit Model(painn_model_t* raw) : model_(raw, painn_model_free) {}
    std::shared_ptr<painn_model_t> model_;
};

/// Results of one evaluation; vectors are empty unless requested.
struct Results {
    double energy = 0.0;                  ///< eV
    std::vector<double> forces;           ///< [n][3], eV/A
    std::array<double, 9> virial{};       ///< [3][3], eV
    std::vector<double> energies;         ///< [n], eV (with per_atom)
    std::vector<double> atom_virials;     ///< [n][3][3], eV (with per_atom)
};

/// A model bound to a device and a precision; one thread at a time; movable, not copyable.
class Calculator {
public:
    /// device: "cpu", "cuda", "cuda:N" or "auto"; precision: "f64" or "f32"; skin in
    /// Angstrom (negative: the default).
    Calculator(const Model& model, const std::string& device = "auto",
               const std::string& precision = "f32", double skin_angstrom = -1.0) {
        painn_calculator_t* raw = nullptr;
        detail::check(painn_calculator_create(model.get(), device.c_str(), precision.c_str(),
                                              skin_angstrom, &raw));
        calculator_.reset(raw);
    }

    /// The device in use ("cpu", or "cuda:N" and the GPU's name).
    std::string device() {
        char buffer[256];
        detail::check(painn_calculator_device(calculator_.get(), buffer, sizeof buffer));
        return buffer;
    }

    /// A whole system: positions [n][3]; cell [3][3] as rows (nullptr: none); pbc per axis.
    Results compute(const std::vector<int32_t>& atomic_numbers, const std::vector<double>& positions,
                    const double* cell = nullptr, std::array<bool, 3> pbc = {false, false, false},
                    bool per_atom = false) {
        const std::size_t n = checked_size(atomic_numbers, positions);
        Results results;
        prepare(results, n, per_atom);
        const int32_t flags[3] = {pbc[0], pbc[1], pbc[2]};
        detail::check(painn_compute(calculator_.get(), static_cast<int64_t>(n), atomic_numbers.data(),
                                    positions.data(), cell, flags, &results.energy,
                                    results.forces.data(), results.virial.data(),
                                    per_atom ? results.energies.data() : nullptr,
                                    per_atom ? results.atom_virials.data() : nullptr));
        return results;
    }

    /// Owned atoms first (n_owned of them), ghosts after; no periodicity; the energy counts
    /// owned atoms, forces come back for all.
    Results compute_local(const std::vector<int32_t>& atomic_numbers,
                          const std::vector<double>& positions, std::size_t n_owned,
                          bool per_atom = false) {
        const std::size_t n = checked_size(atomic_numbers, positions);
        Results results;
        prepare(results, n, per_atom);
        detail::check(painn_compute_local(calculator_.get(), static_cast<int64_t>(n),
                                          static_cast<int64_t>(n_owned), atomic_numbers.data(),
                                          positions.data(), &results.energy, results.forces.data(),
                                          results.virial.data(),
                                          per_atom ? results.energies.data() : nullptr,
                                          per_atom ? results.atom_virials.data() : nullptr));
        return results;
    }

    painn_calculator_t* get() noexcept { return calculator_.get(); }

private:
    struct Free {
        void operator()(painn_calculator_t* c) const noexcept { painn_calculator_free(c); }
    };

    static std::size_t checked_size(const std::vector<int32_t>& z, const std::vector<double>& positions) {
        if (positions.size() != 3 * z.size()) {
            throw Error(PAINN_INVALID_ARGUMENT,
                        "invalid argument `positions`: " + std::to_string(positions.size()) +
                            " values for " + std::to_string(z.size()) + " atoms (need 3 per atom)");
        }
        return z.size();
    }

    static void prepare(Results& results, std::size_t n, bool per_atom) {
        results.forces.assign(3 * n, 0.0);
        if (per_atom) {
            results.energies.assign(n, 0.0);
            results.atom_virials.assign(9 * n, 0.0);
        }
    }

    std::unique_ptr<painn_calculator_t, Free> calculator_;
};

}  // namespace painn

#endif  // PAINN_HPP
