/* The C ABI from C: computes the cases of an input file (written by tests/c_api.rs) and
 * prints the results with full precision, then exercises every error path.
 *
 *     test_c_api MODEL.safetensors CASES.txt OUTPUT.txt
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "painn.h"

static int failures = 0;

#define CHECK(condition)                                                         \
    do {                                                                         \
        if (!(condition)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* The call fails with `status` and the last error mentions `needle`. */
static void expect_error(painn_status_t got, painn_status_t status, const char* needle, int line) {
    const char* message = painn_last_error();
    if (got != status || strstr(message, needle) == NULL) {
        fprintf(stderr, "line %d: expected status %d mentioning \"%s\", got %d: %s\n", line, status,
                needle, got, message);
        failures++;
    }
}
#define EXPECT_ERROR(call, status, needle) expect_error((call), (status), (needle), __LINE__)

static void print_array(FILE* out, const char* name, const double* values, long count) {
    fprintf(out, "%s", name);
    for (long k = 0; k < count; ++k) fprintf(out, " %.17g", values[k]);
    fprintf(out, "\n");
}

static int compute_cases(painn_calculator_t* calculator, const char* input_path, const char* output_path) {
    FILE* in = fopen(input_path, "r");
    FILE* out = fopen(output_path, "w");
    if (!in || !out) {
        fprintf(stderr, "cannot open %s or %s\n", input_path, output_path);
        return 1;
    }
    int count = 0;
    if (fscanf(in, " cases %d", &count) != 1) return 1;
    for (int c = 0; c < count; ++c) {
        char name[256];
        long n = 0;
        int pbc[3] = {0, 0, 0}, has_cell = 0;
        double cell[9] = {0};
        if (fscanf(in, " case %255s %ld %d %d %d %d", name, &n, &pbc[0], &pbc[1], &pbc[2], &has_cell) != 6) return 1;
        if (has_cell) {
            if (fscanf(in, " cell") != 0) return 1;
            for (int k = 0; k < 9; ++k) if (fscanf(in, "%lf", &cell[k]) != 1) return 1;
        }
        int32_t* z = malloc(sizeof(int32_t) * (n + 1));
        double* positions = malloc(sizeof(double) * (3 * n + 1));
        float* positions_float = malloc(sizeof(float) * (3 * n + 1));
        double* forces = malloc(sizeof(double) * (3 * n + 1));
        double* energies = malloc(sizeof(double) * (n + 1));
        double* atom_virials = malloc(sizeof(double) * (9 * n + 1));
        double energy = 0, virial[9];
        if (fscanf(in, " Z") != 0) return 1;
        for (long i = 0; i < n; ++i) if (fscanf(in, "%d", &z[i]) != 1) return 1;
        if (fscanf(in, " positions") != 0) return 1;
        for (long k = 0; k < 3 * n; ++k) {
            if (fscanf(in, "%lf", &positions[k]) != 1) return 1;
            positions_float[k] = (float)positions[k];
        }
        painn_status_t status = painn_compute(calculator, n, z, positions, has_cell ? cell : NULL, pbc,
                                              &energy, forces, virial, energies, atom_virials);
        if (status != PAINN_SUCCESS) {
            fprintf(stderr, "%s: %s\n", name, painn_last_error());
            return 1;
        }
        fprintf(out, "case %s\n", name);
        print_array(out, "energy", &energy, 1);
        print_array(out, "forces", forces, 3 * n);
        print_array(out, "virial", virial, 9);
        print_array(out, "energies", energies, n);
        print_array(out, "atom_virials", atom_virials, 9 * n);

        /* Single-precision inputs: the same structure to float32 round-off; energy only. */
        double energy_float = 0;
        float cell_float[9];
        for (int k = 0; k < 9; ++k) cell_float[k] = (float)cell[k];
        status = painn_compute_float(calculator, n, z, positions_float, has_cell ? cell_float : NULL, pbc,
                                     &energy_float, NULL, NULL, NULL, NULL);
        CHECK(status == PAINN_SUCCESS);
        CHECK(fabs(energy_float - energy) <= 1e-3 * (1.0 + fabs(energy)));
        free(z);
        free(positions);
        free(positions_float);
        free(forces);
        free(energies);
        free(atom_virials);
    }
    fclose(in);
    fclose(out);
    return 0;
}

static void error_paths(const char* model_path, painn_model_t* model, painn_calculator_t* calculator) {
    painn_model_t* other = NULL;
    painn_calculator_t* other_calculator = NULL;
    double energy = 0, forces[9], virial[9];
    int32_t z[3] = {6, 8, 1};
    double positions[9] = {0, 0, 0, 1.2, 0, 0, 0, 1.1, 0};
    int32_t pbc[3] = {1, 1, 1};
    double cell[9] = {8, 0, 0, 0, 8, 0, 0, 0, 8};

    /* Versions. */
    CHECK(painn_abi_version() == PAINN_ABI_VERSION);
    CHECK(strlen(painn_version()) >= 5);

    /* NULL pointers are named. */
    EXPECT_ERROR(painn_model_load(NULL, &other), PAINN_INVALID_ARGUMENT, "`path`");
    EXPECT_ERROR(painn_model_load(model_path, NULL), PAINN_INVALID_ARGUMENT, "`model`");
    EXPECT_ERROR(painn_model_load_buffer(NULL, 10, "x", &other), PAINN_INVALID_ARGUMENT, "`data`");
    EXPECT_ERROR(painn_model_cutoff(NULL, &energy), PAINN_INVALID_ARGUMENT, "`model`");
    EXPECT_ERROR(painn_model_cutoff(model, NULL), PAINN_INVALID_ARGUMENT, "`cutoff`");
    EXPECT_ERROR(painn_calculator_create(NULL, "cpu", "f64", -1, &other_calculator), PAINN_INVALID_ARGUMENT, "`model`");
    EXPECT_ERROR(painn_calculator_create(model, NULL, "f64", -1, &other_calculator), PAINN_INVALID_ARGUMENT, "`device`");
    EXPECT_ERROR(painn_calculator_create(model, "cpu", NULL, -1, &other_calculator), PAINN_INVALID_ARGUMENT, "`precision`");
    EXPECT_ERROR(painn_calculator_create(model, "cpu", "f64", -1, NULL), PAINN_INVALID_ARGUMENT, "`calculator`");
    EXPECT_ERROR(painn_compute(NULL, 3, z, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`calculator`");
    EXPECT_ERROR(painn_compute(calculator, 3, NULL, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`atomic_numbers`");
    EXPECT_ERROR(painn_compute(calculator, 3, z, NULL, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`positions`");
    EXPECT_ERROR(painn_compute_local(calculator, 3, 2, z, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`positions`");
    EXPECT_ERROR(painn_calculator_device(calculator, NULL, 10), PAINN_INVALID_ARGUMENT, "`buffer`");

    /* Bad values. */
    EXPECT_ERROR(painn_compute(calculator, -1, z, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_atoms`");
    EXPECT_ERROR(painn_compute_local(calculator, 3, -2, z, positions, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_owned`");
    EXPECT_ERROR(painn_compute_local(calculator, 3, 4, z, positions, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_owned`");
    double bad[9] = {0, 0, 0, 1.2, 0, 0, 0, NAN, 0};
    EXPECT_ERROR(painn_compute(calculator, 3, z, bad, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "atom 2");
    bad[7] = INFINITY;
    EXPECT_ERROR(painn_compute(calculator, 3, z, bad, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "atom 2");
    int32_t unknown[3] = {6, 8, 150};
    EXPECT_ERROR(painn_compute(calculator, 3, unknown, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "atom 2 has atomic number 150");
    int32_t zero[3] = {6, 0, 1};
    EXPECT_ERROR(painn_compute(calculator, 3, zero, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "atom 1");
    double flat_cell[9] = {8, 0, 0, 16, 0, 0, 0, 0, 8};
    EXPECT_ERROR(painn_compute(calculator, 3, z, positions, flat_cell, pbc, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "linearly dependent");
    EXPECT_ERROR(painn_compute(calculator, 3, z, positions, NULL, pbc, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`cell`");
    double nan_cell[9] = {8, 0, 0, 0, NAN, 0, 0, 0, 8};
    EXPECT_ERROR(painn_compute(calculator, 3, z, positions, nan_cell, pbc, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "cell vector 1");
    double close[9] = {0, 0, 0, 1.2, 0, 0, 1.2, 0, 0.00001};
    EXPECT_ERROR(painn_compute(calculator, 3, z, close, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "atoms 1 and 2");
    EXPECT_ERROR(painn_calculator_create(model, "tpu", "f64", -1, &other_calculator), PAINN_INVALID_ARGUMENT, "`device`");
    EXPECT_ERROR(painn_calculator_create(model, "cpu", "f16", -1, &other_calculator), PAINN_INVALID_ARGUMENT, "`precision`");
    EXPECT_ERROR(painn_calculator_create(model, "cpu", "f64", NAN, &other_calculator), PAINN_INVALID_ARGUMENT, "`skin_angstrom`");
    painn_status_t gpu = painn_calculator_create(model, "cuda:0", "f64", -1, &other_calculator);
    CHECK(gpu == PAINN_UNSUPPORTED || gpu == PAINN_CUDA_ERROR);
    gpu = painn_calculator_create(model, "cuda:7", "f32", -1, &other_calculator);
    CHECK(gpu == PAINN_CUDA_ERROR);

    /* The model's elements: a count, then each atomic number; an index out of range is named. */
    int32_t count = 0, number = 0, previous = 0;
    CHECK(painn_model_element_count(model, &count) == PAINN_SUCCESS && count > 0);
    for (int32_t index = 0; index < count; ++index) {
        CHECK(painn_model_element(model, index, &number) == PAINN_SUCCESS);
        CHECK(number > previous);
        previous = number;
    }
    EXPECT_ERROR(painn_model_element(model, count, &number), PAINN_INVALID_ARGUMENT, "`index`");
    EXPECT_ERROR(painn_model_element(model, -1, &number), PAINN_INVALID_ARGUMENT, "`index`");
    EXPECT_ERROR(painn_model_element_count(NULL, &count), PAINN_INVALID_ARGUMENT, "`model`");
    EXPECT_ERROR(painn_model_element(model, 0, NULL), PAINN_INVALID_ARGUMENT, "`atomic_number`");

    /* Counts larger than any call takes are refused before the arrays are read. */
    EXPECT_ERROR(painn_compute(calculator, (int64_t)1 << 40, z, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_atoms`");
    EXPECT_ERROR(painn_compute(calculator, INT64_MAX, z, positions, NULL, NULL, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_atoms`");
    EXPECT_ERROR(painn_compute_local(calculator, INT64_MAX, 0, z, positions, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_atoms`");
    EXPECT_ERROR(painn_compute_local(calculator, 3, INT64_MIN, z, positions, &energy, forces, NULL, NULL, NULL), PAINN_INVALID_ARGUMENT, "`n_owned`");

    /* Model files: missing, truncated, corrupt. */
    EXPECT_ERROR(painn_model_load("/nonexistent/model.safetensors", &other), PAINN_IO_ERROR, "/nonexistent/model.safetensors");
    FILE* file = fopen(model_path, "rb");
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char* bytes = malloc(size);
    CHECK(fread(bytes, 1, size, file) == (size_t)size);
    fclose(file);
    EXPECT_ERROR(painn_model_load_buffer(bytes, size / 2, "half.safetensors", &other), PAINN_MODEL_ERROR, "half.safetensors");
    EXPECT_ERROR(painn_model_load_buffer(bytes, 7, "tiny.safetensors", &other), PAINN_MODEL_ERROR, "tiny.safetensors");
    EXPECT_ERROR(painn_model_load_buffer(bytes, SIZE_MAX, "huge.safetensors", &other), PAINN_INVALID_ARGUMENT, "`size`");
    memset(bytes + 8, 'x', 16);
    EXPECT_ERROR(painn_model_load_buffer(bytes, size, "corrupt.safetensors", &other), PAINN_MODEL_ERROR, "corrupt.safetensors");
    free(bytes);

    /* Nothing above leaked a handle, and the calculator still works. */
    CHECK(other == NULL);
    CHECK(other_calculator == NULL);
    CHECK(painn_compute(calculator, 3, z, positions, cell, pbc, &energy, forces, virial, NULL, NULL) == PAINN_SUCCESS);
    CHECK(isfinite(energy));
    CHECK(painn_compute(calculator, 0, NULL, NULL, NULL, NULL, &energy, NULL, NULL, NULL, NULL) == PAINN_SUCCESS);
    CHECK(energy == 0.0);
    CHECK(painn_model_free(NULL) == PAINN_SUCCESS);
    CHECK(painn_calculator_free(NULL) == PAINN_SUCCESS);
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL CASES OUTPUT\n", argv[0]);
        return 2;
    }
    painn_model_t* model = NULL;
    if (painn_model_load(argv[1], &model) != PAINN_SUCCESS) {
        fprintf(stderr, "%s\n", painn_last_error());
        return 1;
    }
    double cutoff = 0;
    int32_t layers = 0, max_z = 0;
    CHECK(painn_model_cutoff(model, &cutoff) == PAINN_SUCCESS && cutoff > 0);
    CHECK(painn_model_layers(model, &layers) == PAINN_SUCCESS && layers > 0);
    CHECK(painn_model_max_z(model, &max_z) == PAINN_SUCCESS && max_z > 0);
    painn_calculator_t* calculator = NULL;
    if (painn_calculator_create(model, "cpu", "f64", -1, &calculator) != PAINN_SUCCESS) {
        fprintf(stderr, "%s\n", painn_last_error());
        return 1;
    }
    /* The calculator keeps the model alive: free the model first. */
    CHECK(painn_model_free(model) == PAINN_SUCCESS);
    char device[64];
    CHECK(painn_calculator_device(calculator, device, sizeof device) == PAINN_SUCCESS);
    CHECK(strcmp(device, "cpu") == 0);
    if (compute_cases(calculator, argv[2], argv[3]) != 0) {
        fprintf(stderr, "computing the cases failed\n");
        return 1;
    }
    painn_model_t* again = NULL;
    CHECK(painn_model_load(argv[1], &again) == PAINN_SUCCESS);
    error_paths(argv[1], again, calculator);
    CHECK(painn_model_free(again) == PAINN_SUCCESS);
    CHECK(painn_calculator_free(calculator) == PAINN_SUCCESS);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("C API: all checks passed\n");
    return 0;
}
