// Small systems: the whole model in two launches, `small_forward` (embedding to per-atom
// energies) and `small_backward` (head gradient to dE/dr of every edge), instead of about 20
// launches each. Each is one thread-block cluster, a block per multiprocessor; the stages
// that the staged path runs as separate kernels are loops over the cluster's threads,
// separated by cluster barriers (release/acquire: the next stage sees every global write of
// the last). Each value is computed as in the staged kernels (message.cu, update.cu,
// dense.cu, head.cu); some sums run in another fixed order (edges split over lanes, k over
// warps): deterministic, and equal to the staged path to float32 round-off.
//
// The host launches these only on GPUs with clusters (sm_90 and newer), as one cluster of
// SMALL_THREADS-thread blocks, and only for systems of a few dozen atoms at most
// (src/backend/cuda/small.rs): a call there is bound by chains of dependent loads, not by
// arithmetic, and a cluster barrier costs less than a kernel launch.
//
// Values written inside a launch are read through plain pointers (no __restrict__ const, no
// __ldg): the read-only data path does not see another multiprocessor's writes. Where a
// stage stores, it first loads everything it needs: a store could alias a later load, which
// the compiler would then have to wait for.

#ifndef SMALL_THREADS
#error "SMALL_THREADS must be defined by the host (-DSMALL_THREADS=...)"
#endif
#ifndef SMALL_ROWS
#error "SMALL_ROWS must be defined by the host (-DSMALL_ROWS=...)"
#endif
#ifndef SMALL_MAX_LAYERS
#error "SMALL_MAX_LAYERS must be defined by the host (-DSMALL_MAX_LAYERS=...)"
#endif
#ifndef SMALL_MAX_HIDDEN
#error "SMALL_MAX_HIDDEN must be defined by the host (-DSMALL_MAX_HIDDEN=...)"
#endif
#ifndef SMALL_EDGE_PARTS
#error "SMALL_EDGE_PARTS must be defined by the host (-DSMALL_EDGE_PARTS=...)"
#endif
static_assert(SMALL_THREADS % 32 == 0 && SMALL_ROWS <= SMALL_THREADS / 32 && SMALL_ROWS <= 32,
              "whole warps; a lane per row (forward) and a warp per row (backward)");

// One layer's weights and buffers (`LayerWeights`, `LayerBuffers`); update_out is
// [n][3H], or [n][H] for the last layer.
struct SmallLayer {
    const float* table;
    const float* hidden_weight;  // [H][2H]
    const float* hidden_bias;    // [H]
    const float* out_weight;     // [width][H]
    const float* out_bias;       // [width]
    const float* mixing;         // [3][3]
    float* s_in;
    float* v_in;
    float* s_mid;
    float* v_mid;
    float* norm;
    float* update_pre;
    float* update_out;
};

// Everything both kernels read and write (src/backend/cuda/small.rs, `SmallModel`: same
// layout).
struct SmallModel {
    int n;
    int n_energy;
    int h;
    int n_layers;
    float edge_round_off;
    float spacing;
    const i64* offsets;
    const int* sources;
    const float* geometry;
    const int* atomic_numbers;
    const float* embedding;
    float* concat;  // [n][2H]
    float* hidden;  // [n][H]
    float* s_final;
    const float* head_weight[3];
    const float* head_bias[3];
    float* head_pre[2];
    float* head_act[2];
    float* head_g[2];
    float* energies;
    float* gs;
    float* gv;
    float* gs_mid;
    float* gv_mid;
    float* g_update;
    float* g_hidden;
    float* de_dr;
    float* edge_partials;  // [edges][4][H / SMALL_ROW_GROUP]
    SmallLayer layers[SMALL_MAX_LAYERS];
};

// Every thread of the cluster waits here until all have arrived; writes before it are
// visible after it.
__device__ __forceinline__ void cluster_barrier() {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n\t"
        "barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// One cluster of gridDim.x blocks: the host sets the cluster size at launch (up to 16, a
// non-portable size where the GPU allows it).
#define SMALL_ATTRIBUTES __launch_bounds__(SMALL_THREADS, 1)

struct Lanes {
    int thread, threads, warp, warps, lane;
};

__device__ __forceinline__ Lanes lanes() {
    Lanes t;
    t.thread = blockIdx.x * blockDim.x + threadIdx.x;
    t.threads = gridDim.x * blockDim.x;
    t.warp = t.thread >> 5;
    t.warps = t.threads >> 5;
    t.lane = threadIdx.x & 31;
    return t;
}

__device__ __forceinline__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Lane r's copy of acc[r] (a register array indexed by constants only).
template <int ROWS>
__device__ __forceinline__ float lane_row(const float (&acc)[ROWS], int lane) {
    float mine = 0.0f;
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        if (lane == r) mine = acc[r];
    return mine;
}

// Edges loaded at once per thread in the message stages (their loads overlap): fewer
// backward, which holds more per edge in registers. Lanes per (atom, feature) sharing a
// row's edges (a power of two dividing 32): a warp holds 32 / SMALL_EDGE_PARTS features.
#define SMALL_EDGE_CHUNK 4
#define SMALL_EDGE_CHUNK_BACKWARD 2
static_assert(SMALL_EDGE_PARTS == 1 || SMALL_EDGE_PARTS == 2 || SMALL_EDGE_PARTS == 4 ||
                  SMALL_EDGE_PARTS == 8, "a power of two, at most 8");
#define SMALL_ROW_GROUP (32 / SMALL_EDGE_PARTS)

// What the message stages read of an edge: d, u, the table interval and the position in it,
// and the source atom.
struct EdgeGeometry {
    float d, u[3], t;
    int node, source;
};

__device__ __forceinline__ EdgeGeometry load_edge(const SmallModel& m, i64 e) {
    const float* g = m.geometry + GEOMETRY_WIDTH * e;
    EdgeGeometry edge;
    edge.d = g[0];
    for (int x = 0; x < 3; ++x) edge.u[x] = g[1 + x];
    edge.node = (int)g[7];
    edge.t = g[8];
    edge.source = m.sources[e];
    return edge;
}

// Message (message_forward) and |v| (norm_concat) of layer l for every (atom, feature); the
// first layer reads its input from the embedding and stores it (s_in, v_in = 0) for the
// backward pass. SMALL_EDGE_PARTS lanes share each (atom, feature), taking every
// SMALL_EDGE_PARTS-th edge of the row, and their sums are added by a fixed butterfly
// (deterministic; the rows' chains of dependent loads are that much shorter).
__device__ __forceinline__ void small_message(const SmallModel& m, int l, const Lanes& t) {
    const SmallLayer& L = m.layers[l];
    const int h = m.h, width = 3 * h;
    const float epsilon = (float)F32_EPSILON;
    // h is a multiple of 32: whole warps iterate together (the butterfly below).
    const i64 count = (i64)m.n * h * SMALL_EDGE_PARTS;
    for (i64 k = t.thread; k < count; k += t.threads) {
        const int part = (int)(k % SMALL_EDGE_PARTS);
        const i64 feature = k / SMALL_EDGE_PARTS;
        const int i = (int)(feature / h), c = (int)(feature % h);
        float s = 0.0f, v[3] = {0.0f, 0.0f, 0.0f}, round_off = 0.0f;
        const i64 start = m.offsets[i], end = m.offsets[i + 1];
        for (i64 e0 = start + part; e0 < end; e0 += SMALL_EDGE_PARTS * SMALL_EDGE_CHUNK) {
            // A chunk's loads first (past the row's end, its first edge again, unused),
            // then the sums in edge order.
            EdgeGeometry edge[SMALL_EDGE_CHUNK];
            float ws[SMALL_EDGE_CHUNK], wv1[SMALL_EDGE_CHUNK], wv2[SMALL_EDGE_CHUNK];
            float s_j[SMALL_EDGE_CHUNK], v_j[SMALL_EDGE_CHUNK][3];
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK; ++q) {
                const i64 e = e0 + (i64)q * SMALL_EDGE_PARTS;
                edge[q] = load_edge(m, e < end ? e : start);
            }
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK; ++q) {
                float b[4];
                hermite_basis(edge[q].t, b);
                const float* node_a = L.table + (i64)edge[q].node * NODE_VECTORS * width;
                const float* node_b = node_a + NODE_VECTORS * width;
                ws[q] = interpolate(node_a, node_b, width, c, b);
                wv2[q] = interpolate(node_a, node_b, width, 2 * h + c, b);
                const i64 j = edge[q].source;
                if (l == 0) {
                    s_j[q] = m.embedding[(i64)m.atomic_numbers[j] * h + c];
                } else {
                    s_j[q] = L.s_in[j * h + c];
                    wv1[q] = interpolate(node_a, node_b, width, h + c, b);
                    for (int x = 0; x < 3; ++x) v_j[q][x] = L.v_in[(j * 3 + x) * h + c];
                }
            }
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK; ++q) {
                if (e0 + (i64)q * SMALL_EDGE_PARTS >= end) break;
                s += s_j[q] * ws[q];
                // Each term's relative round-off: the arithmetic's, and the edge vector's over d.
                const float relative = epsilon + m.edge_round_off / edge[q].d;
                if (l == 0) {
                    for (int x = 0; x < 3; ++x) v[x] += edge[q].u[x] * wv2[q];
                    round_off += fabsf(wv2[q]) * relative;
                } else {
                    float v_j_magnitude = 0.0f;
                    for (int x = 0; x < 3; ++x) {
                        v[x] += v_j[q][x] * wv1[q] + edge[q].u[x] * wv2[q];
                        v_j_magnitude += fabsf(v_j[q][x]);
                    }
                    round_off += (fabsf(wv1[q]) * v_j_magnitude + fabsf(wv2[q])) * relative;
                }
            }
        }
        for (int offset = 1; offset < SMALL_EDGE_PARTS; offset <<= 1) {
            s += __shfl_xor_sync(0xffffffffu, s, offset);
            for (int x = 0; x < 3; ++x) v[x] += __shfl_xor_sync(0xffffffffu, v[x], offset);
            round_off += __shfl_xor_sync(0xffffffffu, round_off, offset);
        }
        if (part != 0) continue;
        const i64 at = (i64)i * h + c;
        float s_i, v_i[3] = {0.0f, 0.0f, 0.0f};
        if (l == 0) {
            s_i = m.embedding[(i64)m.atomic_numbers[i] * h + c];
        } else {
            s_i = L.s_in[at];
            for (int x = 0; x < 3; ++x) v_i[x] = L.v_in[((i64)i * 3 + x) * h + c];
        }
        s += s_i;
        for (int x = 0; x < 3; ++x) v[x] += v_i[x];
        round_off += (fabsf(v_i[0]) + fabsf(v_i[1]) + fabsf(v_i[2])) * epsilon;
        float value = sqrtf(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        if (!(value > (float)NORM_ROUND_OFF_FACTOR * round_off)) {
            value = 0.0f;
            v[0] = v[1] = v[2] = 0.0f;
        }
        if (l == 0) {
            L.s_in[at] = s_i;
            for (int x = 0; x < 3; ++x) L.v_in[((i64)i * 3 + x) * h + c] = 0.0f;
        }
        L.s_mid[at] = s;
        for (int x = 0; x < 3; ++x) L.v_mid[((i64)i * 3 + x) * h + c] = v[x];
        L.norm[at] = value;
        m.concat[(i64)i * 2 * h + c] = s;
        m.concat[(i64)i * 2 * h + h + c] = value;
    }
}

// Shared memory of each block: a group of input rows, and the k-split partial sums of the
// backward products (PARTS x SMALL_ROWS x warps x 32).
#define SMALL_WARPS (SMALL_THREADS / 32)
#define SMALL_MAX_K (3 * SMALL_MAX_HIDDEN)
#define SMALL_SHARED_FLOATS (SMALL_ROWS * SMALL_MAX_K + 2 * SMALL_ROWS * SMALL_WARPS * 32)
// Rows per group of a forward product (staged in shared memory, one lane each).
#define SMALL_NT_ROWS 12
static_assert(SMALL_NT_ROWS * 2 * SMALL_MAX_HIDDEN <= SMALL_SHARED_FLOATS, "staged rows fit");

// Weights per lane of a forward product (k <= 2H, split over the lanes), and per step of a
// warp's run of k in a backward product, held in registers.
#define SMALL_NT_STEPS (2 * SMALL_MAX_HIDDEN / 32)
#define SMALL_NN_STEPS 8

// Copies rows row0..row0 + rows of x ([.][k_depth]) to `staged` ([rows][k_depth]), at most
// MAX_VALUES values, between two block barriers: every load is issued before the first
// (which also ends the last use of `staged`).
template <int MAX_VALUES>
__device__ __forceinline__ void stage_rows(const float* x, int row0, int rows, int k_depth,
                                           float* staged) {
    constexpr int PER_THREAD = (MAX_VALUES + SMALL_THREADS - 1) / SMALL_THREADS;
    const int count = rows * k_depth;
    const float* from = x + (i64)row0 * k_depth;
    float values[PER_THREAD];
#pragma unroll
    for (int q = 0; q < PER_THREAD; ++q) {
        const int e = threadIdx.x + q * SMALL_THREADS;
        values[q] = e < count ? from[e] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < PER_THREAD; ++q) {
        const int e = threadIdx.x + q * SMALL_THREADS;
        if (e < count) staged[e] = values[q];
    }
    __syncthreads();
}

// A Linear layer forward, x [n][k_depth] times weight^T ([n_out][k_depth] rows; `parts` rows
// per output, at o + p part_stride, for the gates' three columns). For each group of
// SMALL_NT_ROWS rows, staged in shared memory by every block: a warp per output column, its
// lanes splitting k (k = lane + 32 q, every weight load issued at once), summed by a fixed
// butterfly as gemm_nt_few_rows; `epilogue(row, o, sums)` runs on lane r for row row0 + r.
template <int PARTS, typename Epilogue>
__device__ __forceinline__ void small_nt(int n, int n_out, int k_depth, int parts,
                                         int part_stride, const float* x,
                                         const float* __restrict__ weight, float* shared,
                                         const Lanes& t, Epilogue epilogue) {
    // This warp's weights of output column o, every load at once.
    auto load_weights = [&](int o, float (&w)[PARTS][SMALL_NT_STEPS]) {
#pragma unroll
        for (int p = 0; p < PARTS; ++p) {
#pragma unroll
            for (int q = 0; q < SMALL_NT_STEPS; ++q) {
                const int k = t.lane + 32 * q;
                w[p][q] = o < n_out && p < parts && k < k_depth
                              ? weight[(i64)(o + p * part_stride) * k_depth + k]
                              : 0.0f;
            }
        }
    };
    // The first column's before the staging (their latencies overlap); reloaded only when
    // the warp has several columns.
    float w[PARTS][SMALL_NT_STEPS];
    int loaded = t.warp;
    load_weights(loaded, w);
    for (int row0 = 0; row0 < n; row0 += SMALL_NT_ROWS) {
        const int rows = min(SMALL_NT_ROWS, n - row0);
        stage_rows<SMALL_NT_ROWS * 2 * SMALL_MAX_HIDDEN>(x, row0, rows, k_depth, shared);
        for (int o = t.warp; o < n_out; o += t.warps) {
            if (o != loaded) {
                loaded = o;
                load_weights(o, w);
            }
            float acc[PARTS][SMALL_NT_ROWS] = {};
#pragma unroll
            for (int q = 0; q < SMALL_NT_STEPS; ++q) {
                const int k = t.lane + 32 * q;
                if (k < k_depth) {
#pragma unroll
                    for (int p = 0; p < PARTS; ++p) {
#pragma unroll
                        for (int r = 0; r < SMALL_NT_ROWS; ++r)
                            acc[p][r] += shared[r * k_depth + k] * w[p][q];
                    }
                }
            }
            float sums[PARTS];
#pragma unroll
            for (int p = 0; p < PARTS; ++p) {
#pragma unroll
                for (int r = 0; r < SMALL_NT_ROWS; ++r) acc[p][r] = warp_sum(acc[p][r]);
                sums[p] = lane_row(acc[p], t.lane);
            }
            if (t.lane < rows) epilogue(row0 + t.lane, o, sums);
        }
    }
}

// pre = x W^T + b and act = silu(pre), [n][n_out].
__device__ __forceinline__ void small_linear_silu(int n, int n_out, int k_depth, const float* x,
                                                  const float* __restrict__ weight,
                                                  const float* __restrict__ bias, float* pre,
                                                  float* act, float* shared, const Lanes& t) {
    small_nt<1>(n, n_out, k_depth, 1, 0, x, weight, shared, t,
                [&](int row, int o, const float (&sums)[1]) {
                    const float value = sums[0] + bias[o];
                    pre[(i64)row * n_out + o] = value;
                    act[(i64)row * n_out + o] = silu(value);
                });
}

// The update MLP's output layer (update_out = hidden W2^T + b2) and the gates (gate_forward)
// of layer l: a warp per (feature c, rows) computes the columns c, H + c and 2H + c that
// feature c's gates read.
__device__ __forceinline__ void small_out_gate(const SmallModel& m, int l, float* shared,
                                               const Lanes& t) {
    const SmallLayer& L = m.layers[l];
    const int h = m.h;
    const bool last = l + 1 == m.n_layers;
    const int parts = last ? 1 : 3, width = parts * h;
    float* s_next = last ? m.s_final : m.layers[l + 1].s_in;
    float* v_next = last ? nullptr : m.layers[l + 1].v_in;
    small_nt<3>(m.n, h, h, parts, h, m.hidden, L.out_weight, shared, t,
                [&](int i, int c, const float (&sums)[3]) {
                    // Every load before the first store (which could alias them).
                    float a[3], vm[3], mixing[9];
                    for (int p = 0; p < 3; ++p) a[p] = p < parts ? sums[p] + L.out_bias[p * h + c] : 0.0f;
                    const float s_mid = L.s_mid[(i64)i * h + c];
                    if (!last) {
                        for (int x = 0; x < 3; ++x) vm[x] = L.v_mid[((i64)i * 3 + x) * h + c];
                        for (int q = 0; q < 9; ++q) mixing[q] = L.mixing[q];
                    }
                    for (int p = 0; p < parts; ++p) L.update_out[(i64)i * width + p * h + c] = a[p];
                    s_next[(i64)i * h + c] = s_mid + a[0];
                    if (last) return;
                    for (int x = 0; x < 3; ++x) {
                        const float mixed =
                            mixing[3 * x] * vm[0] + mixing[3 * x + 1] * vm[1] + mixing[3 * x + 2] * vm[2];
                        v_next[((i64)i * 3 + x) * h + c] = vm[x] * a[1] + mixed * a[2];
                    }
                });
}

// A Linear layer backward, g [n][k_depth] times weight ([k_depth][n_total] rows; outputs
// c < n_part at c + p part_stride for p < PARTS). A block per (32 columns, SMALL_ROWS rows):
// the rows of g staged in shared memory, the block's warps splitting k into equal runs and
// their sums added in warp order (as gemm_nn_few_rows); `epilogue(row, c, sums)` for each
// output.
template <int PARTS, typename Epilogue>
__device__ __forceinline__ void small_nn(int n, int n_part, int k_depth, int n_total,
                                         int part_stride, const float* g,
                                         const float* __restrict__ weight, float* shared,
                                         Epilogue epilogue) {
    float* partial = shared + SMALL_ROWS * SMALL_MAX_K;  // [PARTS][SMALL_ROWS][warps][32]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int column_blocks = (n_part + 31) / 32;
    const int items = column_blocks * ((n + SMALL_ROWS - 1) / SMALL_ROWS);
    const int run = (k_depth + SMALL_WARPS - 1) / SMALL_WARPS;
    const int k_start = warp * run, k_end = min(k_depth, k_start + run);
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        const int c = (item % column_blocks) * 32 + lane;
        const int row0 = (item / column_blocks) * SMALL_ROWS, rows = min(SMALL_ROWS, n - row0);
        stage_rows<SMALL_ROWS * SMALL_MAX_K>(g, row0, rows, k_depth, shared);
        float acc[PARTS][SMALL_ROWS] = {};
        // This warp's run of k in steps of SMALL_NN_STEPS: each step's weight loads first,
        // then its products.
        for (int k0 = k_start; k0 < k_end; k0 += SMALL_NN_STEPS) {
            float w[PARTS][SMALL_NN_STEPS];
#pragma unroll
            for (int p = 0; p < PARTS; ++p) {
#pragma unroll
                for (int q = 0; q < SMALL_NN_STEPS; ++q) {
                    const int k = k0 + q;
                    w[p][q] = c < n_part && k < k_end
                                  ? weight[(i64)k * n_total + p * part_stride + c]
                                  : 0.0f;
                }
            }
#pragma unroll
            for (int q = 0; q < SMALL_NN_STEPS; ++q) {
                const int k = k0 + q;
                if (k < k_end) {
#pragma unroll
                    for (int p = 0; p < PARTS; ++p) {
#pragma unroll
                        for (int r = 0; r < SMALL_ROWS; ++r)
                            acc[p][r] += shared[r * k_depth + k] * w[p][q];
                    }
                }
            }
        }
#pragma unroll
        for (int p = 0; p < PARTS; ++p)
#pragma unroll
            for (int r = 0; r < SMALL_ROWS; ++r)
                partial[((p * SMALL_ROWS + r) * SMALL_WARPS + warp) * 32 + lane] = acc[p][r];
        __syncthreads();
        const int r = warp;
        if (r < rows && c < n_part) {
            float sums[PARTS];
#pragma unroll
            for (int p = 0; p < PARTS; ++p) {
                sums[p] = 0.0f;
                for (int w = 0; w < SMALL_WARPS; ++w)
                    sums[p] += partial[((p * SMALL_ROWS + r) * SMALL_WARPS + w) * 32 + lane];
            }
            epilogue(row0 + r, c, sums);
        }
    }
}

// out = (g W) (* silu'(silu_pre) when given), [n][n_in] (g [n][k_depth], W [k_depth][n_in]).
__device__ __forceinline__ void small_linear_backward(int n, int n_in, int k_depth,
                                                      const float* g,
                                                      const float* __restrict__ weight,
                                                      const float* silu_pre, float* out,
                                                      float* shared) {
    small_nn<1>(n, n_in, k_depth, n_in, 0, g, weight, shared,
                [&](int row, int c, const float (&sums)[1]) {
                    const i64 at = (i64)row * n_in + c;
                    out[at] = silu_pre ? sums[0] * silu_derivative(silu_pre[at]) : sums[0];
                });
}

extern "C" SMALL_ATTRIBUTES __global__ void small_forward(SmallModel m) {
    __shared__ float shared[SMALL_SHARED_FLOATS];
    const Lanes t = lanes();
    const int h = m.h, n = m.n;
    for (int l = 0; l < m.n_layers; ++l) {
        const SmallLayer& L = m.layers[l];
        small_message(m, l, t);
        cluster_barrier();
        small_linear_silu(n, h, 2 * h, m.concat, L.hidden_weight, L.hidden_bias, L.update_pre,
                          m.hidden, shared, t);
        cluster_barrier();
        small_out_gate(m, l, shared, t);
        cluster_barrier();
    }
    const int half = h / 2, quarter = h / 4;
    small_linear_silu(n, half, h, m.s_final, m.head_weight[0], m.head_bias[0], m.head_pre[0],
                      m.head_act[0], shared, t);
    cluster_barrier();
    small_linear_silu(n, quarter, half, m.head_act[0], m.head_weight[1], m.head_bias[1],
                      m.head_pre[1], m.head_act[1], shared, t);
    cluster_barrier();
    // head_energy: E_i = b + sum_c act[i][c] w[c].
    for (int i = t.thread; i < n; i += t.threads) {
        float e = m.head_bias[2][0];
        for (int c = 0; c < quarter; ++c) e += m.head_act[1][(i64)i * quarter + c] * m.head_weight[2][c];
        m.energies[i] = e;
    }
}

// Gates backward (gate_backward) of layer l, for every (atom, feature).
__device__ __forceinline__ void small_gate_backward(const SmallModel& m, int l, const Lanes& t) {
    const SmallLayer& L = m.layers[l];
    const int h = m.h;
    const bool last = l + 1 == m.n_layers;
    const int width = last ? h : 3 * h;
    const i64 count = (i64)m.n * h;
    for (i64 k = t.thread; k < count; k += t.threads) {
        const i64 i = k / h;
        const int c = (int)(k % h);
        // Every load before the first store (which could alias them).
        const float gs = m.gs[k];
        if (last) {
            m.g_update[i * width + c] = gs;
            for (int x = 0; x < 3; ++x) m.gv_mid[(i * 3 + x) * h + c] = 0.0f;
            continue;
        }
        float vm[3], go[3], mixing[9];
        for (int x = 0; x < 3; ++x) {
            vm[x] = L.v_mid[(i * 3 + x) * h + c];
            go[x] = m.gv[(i * 3 + x) * h + c];
        }
        for (int q = 0; q < 9; ++q) mixing[q] = L.mixing[q];
        const float a_v1 = L.update_out[i * width + h + c], a_v2 = L.update_out[i * width + 2 * h + c];
        float g_av1 = 0.0f, g_av2 = 0.0f;
        for (int x = 0; x < 3; ++x) {
            const float mixed = mixing[3 * x] * vm[0] + mixing[3 * x + 1] * vm[1] + mixing[3 * x + 2] * vm[2];
            g_av1 += go[x] * vm[x];
            g_av2 += go[x] * mixed;
        }
        m.g_update[i * width + c] = gs;
        m.g_update[i * width + h + c] = g_av1;
        m.g_update[i * width + 2 * h + c] = g_av2;
        for (int x = 0; x < 3; ++x) {
            const float back_mixed = mixing[x] * go[0] + mixing[3 + x] * go[1] + mixing[6 + x] * go[2];
            m.gv_mid[(i * 3 + x) * h + c] = go[x] * a_v1 + back_mixed * a_v2;
        }
    }
}

// Backward of the MLP's first layer and of norm_concat (norm_backward) of layer l:
// g_concat = g_hidden W1, both halves of feature c in one output; gs_mid = gs +
// g_concat[:, :H] and the norm's share of g_concat[:, H:] added to gv_mid.
__device__ __forceinline__ void small_concat_backward(const SmallModel& m, int l,
                                                      float* shared) {
    const SmallLayer& L = m.layers[l];
    const int h = m.h;
    small_nn<2>(m.n, h, h, 2 * h, h, m.g_hidden, L.hidden_weight, shared,
                [&](int i, int c, const float (&sums)[2]) {
                    // Every load before the first store (which could alias them).
                    const i64 k = (i64)i * h + c;
                    const float gs = m.gs[k], norm = L.norm[k];
                    float vm[3], gv[3];
                    for (int x = 0; x < 3; ++x) {
                        vm[x] = L.v_mid[((i64)i * 3 + x) * h + c];
                        gv[x] = m.gv_mid[((i64)i * 3 + x) * h + c];
                    }
                    m.gs_mid[k] = gs + sums[0];
                    if (norm > 0.0f) {
                        const float scale = sums[1] / norm;
                        for (int x = 0; x < 3; ++x) m.gv_mid[((i64)i * 3 + x) * h + c] = gv[x] + scale * vm[x];
                    }
                });
}

// Message backward (message_backward) of layer l for every (atom, feature), its row's edges
// shared by SMALL_EDGE_PARTS lanes as in small_message: the gradients of the layer's input,
// when wanted, to (gs, gv), and each edge's four sums over SMALL_ROW_GROUP features to
// edge_partials (small_finish_edges adds the row's groups up, in order).
__device__ __forceinline__ void small_message_backward(const SmallModel& m, int l,
                                                       const Lanes& t) {
    const SmallLayer& L = m.layers[l];
    const int h = m.h, width = 3 * h, groups_per_row = h / SMALL_ROW_GROUP;
    const bool need_inputs = l > 0;
    const float inverse_spacing = 1.0f / m.spacing;
    // h is a multiple of 32: each warp holds SMALL_ROW_GROUP features of one atom and
    // iterates as a whole (the butterflies below).
    const i64 count = (i64)m.n * h * SMALL_EDGE_PARTS;
    for (i64 k = t.thread; k < count; k += t.threads) {
        const int part = (int)(k % SMALL_EDGE_PARTS);
        const i64 feature = k / SMALL_EDGE_PARTS;
        const i64 i = feature / h;
        const int c = (int)(feature % h);
        const float gs_i = m.gs_mid[feature];
        float gv_i[3];
        for (int x = 0; x < 3; ++x) gv_i[x] = m.gv_mid[(i * 3 + x) * h + c];
        float gs = 0.0f, gv[3] = {0.0f, 0.0f, 0.0f};
        const i64 start = m.offsets[i], end = m.offsets[i + 1];
        // The same number of steps on every lane of the warp (one row).
        for (i64 e0 = start + part; e0 - part < end;
             e0 += SMALL_EDGE_PARTS * SMALL_EDGE_CHUNK_BACKWARD) {
            // As in small_message: a chunk's loads first, then each edge in order.
            EdgeGeometry edge[SMALL_EDGE_CHUNK_BACKWARD];
            float w[SMALL_EDGE_CHUNK_BACKWARD][3], dw[SMALL_EDGE_CHUNK_BACKWARD][3];
            float s_j[SMALL_EDGE_CHUNK_BACKWARD], v_j[SMALL_EDGE_CHUNK_BACKWARD][3];
            float gs_j[SMALL_EDGE_CHUNK_BACKWARD], gv_j[SMALL_EDGE_CHUNK_BACKWARD][3];
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK_BACKWARD; ++q) {
                const i64 e = e0 + (i64)q * SMALL_EDGE_PARTS;
                edge[q] = load_edge(m, e < end ? e : start);
            }
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK_BACKWARD; ++q) {
                float b[4], db[4];
                hermite_basis(edge[q].t, b);
                hermite_basis_derivative(edge[q].t, db);
                for (int r = 0; r < 4; ++r) db[r] *= inverse_spacing;
                const float* node_a = L.table + (i64)edge[q].node * NODE_VECTORS * width;
                const float* node_b = node_a + NODE_VECTORS * width;
                for (int p = 0; p < 3; ++p) {
                    w[q][p] = interpolate(node_a, node_b, width, p * h + c, b);
                    dw[q][p] = interpolate_derivative(node_a, node_b, width, p * h + c, db);
                }
                const i64 j = edge[q].source;
                s_j[q] = L.s_in[j * h + c];
                for (int x = 0; x < 3; ++x) v_j[q][x] = L.v_in[(j * 3 + x) * h + c];
                if (need_inputs) {
                    gs_j[q] = m.gs_mid[j * h + c];
                    for (int x = 0; x < 3; ++x) gv_j[q][x] = m.gv_mid[(j * 3 + x) * h + c];
                }
            }
#pragma unroll
            for (int q = 0; q < SMALL_EDGE_CHUNK_BACKWARD; ++q) {
                const i64 e = e0 + (i64)q * SMALL_EDGE_PARTS;
                const bool real = e < end;
                const float ws = w[q][0], wv1 = w[q][1], wv2 = w[q][2];
                if (need_inputs && real) {
                    gs += gs_j[q] * ws;
                    for (int x = 0; x < 3; ++x) gv[x] += gv_j[q][x] * wv1;
                }
                float gw_v1 = 0.0f, gw_v2 = 0.0f;
                for (int x = 0; x < 3; ++x) {
                    gw_v1 += gv_i[x] * v_j[q][x];
                    gw_v2 += gv_i[x] * edge[q].u[x];
                }
                float partial[4] = {gs_i * s_j[q] * dw[q][0] + gw_v1 * dw[q][1] + gw_v2 * dw[q][2],
                                    gv_i[0] * wv2, gv_i[1] * wv2, gv_i[2] * wv2};
                // Over the SMALL_ROW_GROUP lanes of this part (lane bits above the part's).
                for (int r = 0; r < 4; ++r) {
                    for (int offset = SMALL_EDGE_PARTS; offset < 32; offset <<= 1)
                        partial[r] += __shfl_xor_sync(0xffffffffu, partial[r], offset);
                }
                if (real && t.lane == part) {
                    const int group = c / SMALL_ROW_GROUP;
                    for (int r = 0; r < 4; ++r)
                        m.edge_partials[(e * 4 + r) * groups_per_row + group] = partial[r];
                }
            }
        }
        for (int offset = 1; offset < SMALL_EDGE_PARTS; offset <<= 1) {
            gs += __shfl_xor_sync(0xffffffffu, gs, offset);
            for (int x = 0; x < 3; ++x) gv[x] += __shfl_xor_sync(0xffffffffu, gv[x], offset);
        }
        if (need_inputs && part == 0) {
            m.gs[feature] = gs_i + gs;
            for (int x = 0; x < 3; ++x) m.gv[(i * 3 + x) * h + c] = gv_i[x] + gv[x];
        }
    }
}

// Each edge's dE/dr from the last message backward's sums, added to de_dr (the end of
// message_backward).
__device__ __forceinline__ void small_finish_edges(const SmallModel& m, const Lanes& t) {
    const int groups_per_row = m.h / SMALL_ROW_GROUP;
    const i64 edges = m.offsets[m.n];
    for (i64 e = t.thread; e < edges; e += t.threads) {
        const float* g = m.geometry + GEOMETRY_WIDTH * e;
        float total[4];
        for (int q = 0; q < 4; ++q) {
            total[q] = 0.0f;
            for (int w = 0; w < groups_per_row; ++w)
                total[q] += m.edge_partials[(e * 4 + q) * groups_per_row + w];
        }
        const float d = g[0];
        const float d_eps = d + (float)U_EPSILON;
        const float g_u_dot_r = total[1] * g[4] + total[2] * g[5] + total[3] * g[6];
        const float radial = total[0] / d - g_u_dot_r / (d * d_eps * d_eps);
        for (int x = 0; x < 3; ++x)
            m.de_dr[3 * e + x] += radial * g[4 + x] + total[1 + x] / d_eps;
    }
}

extern "C" SMALL_ATTRIBUTES __global__ void small_backward(SmallModel m) {
    __shared__ float shared[SMALL_SHARED_FLOATS];
    const Lanes t = lanes();
    const int h = m.h, n = m.n, half = h / 2, quarter = h / 4;
    // head_backward, and de_dr cleared.
    {
        const i64 count = (i64)n * quarter;
        for (i64 k = t.thread; k < count; k += t.threads) {
            const i64 i = k / quarter;
            const int c = (int)(k % quarter);
            m.head_g[1][k] = i < m.n_energy ? m.head_weight[2][c] * silu_derivative(m.head_pre[1][k]) : 0.0f;
        }
        const i64 values = 3 * m.offsets[n];
        for (i64 k = t.thread; k < values; k += t.threads) m.de_dr[k] = 0.0f;
    }
    cluster_barrier();
    small_linear_backward(n, half, quarter, m.head_g[1], m.head_weight[1], m.head_pre[0],
                          m.head_g[0], shared);
    cluster_barrier();
    small_linear_backward(n, h, half, m.head_g[0], m.head_weight[0], nullptr, m.gs, shared);
    cluster_barrier();
    for (int l = m.n_layers - 1; l >= 0; --l) {
        const SmallLayer& L = m.layers[l];
        const int width = l + 1 == m.n_layers ? h : 3 * h;
        if (l + 1 < m.n_layers) small_finish_edges(m, t);
        small_gate_backward(m, l, t);
        cluster_barrier();
        small_linear_backward(n, h, width, m.g_update, L.out_weight, L.update_pre, m.g_hidden,
                              shared);
        cluster_barrier();
        small_concat_backward(m, l, shared);
        cluster_barrier();
        small_message_backward(m, l, t);
        cluster_barrier();
    }
    small_finish_edges(m, t);
}
