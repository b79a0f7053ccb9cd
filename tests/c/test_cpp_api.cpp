// The C++ wrapper: the same cases as test_c_api.c through painn::Model and
// painn::Calculator, printed the same way; exceptions carry the library's messages.
//
//     test_cpp_api MODEL.safetensors CASES.txt OUTPUT.txt
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "painn.hpp"

namespace {

int failures = 0;

void check(bool condition, const char* what) {
    if (!condition) {
        std::cerr << "check failed: " << what << "\n";
        ++failures;
    }
}

void print(std::FILE* out, const char* name, const double* values, std::size_t count) {
    std::fprintf(out, "%s", name);
    for (std::size_t k = 0; k < count; ++k) std::fprintf(out, " %.17g", values[k]);
    std::fprintf(out, "\n");
}

template <typename Call>
void expect_throw(Call call, painn_status_t status, const std::string& needle) {
    try {
        call();
        std::cerr << "expected an exception mentioning " << needle << "\n";
        ++failures;
    } catch (const painn::Error& error) {
        if (error.status() != status || std::string(error.what()).find(needle) == std::string::npos) {
            std::cerr << "unexpected error " << error.status() << ": " << error.what() << "\n";
            ++failures;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: " << argv[0] << " MODEL CASES OUTPUT\n";
        return 2;
    }
    try {
        painn::Model model(argv[1]);
        painn::Calculator calculator(model, "cpu", "f64");
        check(calculator.device() == "cpu", "device");
        check(model.cutoff() > 0 && model.layers() > 0 && model.max_z() > 0, "model info");
        const std::vector<int> elements = model.elements();
        check(!elements.empty() && elements.front() >= 1 && elements.back() <= model.max_z(),
              "model elements");

        std::ifstream in(argv[2]);
        std::FILE* out = std::fopen(argv[3], "w");
        std::string word;
        int count = 0;
        in >> word >> count;
        for (int c = 0; c < count; ++c) {
            std::string name;
            std::size_t n = 0;
            int pbc[3], has_cell = 0;
            double cell[9] = {};
            in >> word >> name >> n >> pbc[0] >> pbc[1] >> pbc[2] >> has_cell;
            if (has_cell) {
                in >> word;
                for (double& v : cell) in >> v;
            }
            std::vector<int32_t> z(n);
            std::vector<double> positions(3 * n);
            in >> word;
            for (auto& v : z) in >> v;
            in >> word;
            for (auto& v : positions) in >> v;
            painn::Results r = calculator.compute(z, positions, has_cell ? cell : nullptr,
                                                  {pbc[0] != 0, pbc[1] != 0, pbc[2] != 0}, true);
            std::fprintf(out, "case %s\n", name.c_str());
            print(out, "energy", &r.energy, 1);
            print(out, "forces", r.forces.data(), r.forces.size());
            print(out, "virial", r.virial.data(), 9);
            print(out, "energies", r.energies.data(), r.energies.size());
            print(out, "atom_virials", r.atom_virials.data(), r.atom_virials.size());
        }
        std::fclose(out);

        // Owned atoms and a ghost: energy of the owned ones, forces for all.
        std::vector<int32_t> z = {6, 8, 1};
        std::vector<double> positions = {0, 0, 0, 1.2, 0, 0, 0, 1.1, 0};
        painn::Results local = calculator.compute_local(z, positions, 2, true);
        check(std::isfinite(local.energy) && local.energies[2] == 0.0, "compute_local");

        expect_throw([] { painn::Model missing("/nonexistent.safetensors"); }, PAINN_IO_ERROR,
                     "/nonexistent.safetensors");
        expect_throw([&] { painn::Calculator bad(model, "tpu"); }, PAINN_INVALID_ARGUMENT, "`device`");
        expect_throw([&] { calculator.compute({6, 150}, {0, 0, 0, 1.2, 0, 0}); }, PAINN_INVALID_ARGUMENT,
                     "atom 1 has atomic number 150");
        expect_throw([&] { calculator.compute({6, 8}, {0, 0, 0}); }, PAINN_INVALID_ARGUMENT, "`positions`");
        std::string bytes = "definitely not a model";
        expect_throw([&] { painn::Model::from_buffer(bytes.data(), bytes.size(), "junk.safetensors"); },
                     PAINN_MODEL_ERROR, "junk.safetensors");
    } catch (const painn::Error& error) {
        std::cerr << "unexpected painn::Error " << error.status() << ": " << error.what() << "\n";
        return 1;
    }
    if (failures) {
        std::cerr << failures << " checks failed\n";
        return 1;
    }
    std::cout << "C++ API: all checks passed (painn " << painn::version() << ")\n";
    return 0;
}
