// Message passing, forward and backward, one block per receiver and one thread per feature
// (blockDim = H, a multiple of 32, at most MAX_HIDDEN). The radial filter w(d) of each edge is
// interpolated from the layer's table (cubic Hermite, model/filter.rs) feature by feature,
// so no per-edge array of width 3H ever exists in memory. Every sum over a row runs in row
// order (sorted by source): deterministic, no atomics.

#ifndef MAX_HIDDEN
#error "MAX_HIDDEN must be defined by the host (-DMAX_HIDDEN=...)"
#endif
static_assert(MAX_HIDDEN % 32 == 0 && MAX_HIDDEN <= 1024, "one thread per feature, whole warps");

// Filter value of output `o` in the edge's interval from the nodes (v_k, delta_k, h m_k) and
// h m_(k+1): v_k + b[2] delta_k + b[1] h m_k + b[3] h m_(k+1) (b: Hermite basis; b[0] is
// implied by v_k + delta_k = v_(k+1)).
__device__ __forceinline__ float interpolate(const float* __restrict__ node,
                                             const float* __restrict__ next, int width, int o,
                                             const float b[4]) {
    return node[o] + b[2] * node[width + o] + b[1] * node[2 * width + o] +
           b[3] * next[2 * width + o];
}

// Its derivative with respect to t (db: the basis derivatives, already divided by h for d/dd).
__device__ __forceinline__ float interpolate_derivative(const float* __restrict__ node,
                                                        const float* __restrict__ next,
                                                        int width, int o, const float db[4]) {
    return db[2] * node[width + o] + db[1] * node[2 * width + o] + db[3] * next[2 * width + o];
}

// Also leaves v_mid's round-off estimate in the norm half of concat ([n][2H]; norm_concat
// reads it and writes the norm there): eps sum_x |v_i| + sum_e (|wv1| sum_x |v_j| + |wv2|)
// (eps + edge_round_off / d), as cpu/message.rs.
extern "C" __global__ void message_forward(int h, const i64* __restrict__ offsets,
                                           const int* __restrict__ sources,
                                           const float* __restrict__ geometry,
                                           const float* __restrict__ table,
                                           const float* __restrict__ s_in,
                                           const float* __restrict__ v_in, int first_layer,
                                           float edge_round_off, float* __restrict__ s_mid,
                                           float* __restrict__ v_mid,
                                           float* __restrict__ concat) {
    const int i = blockIdx.x;
    const int c = threadIdx.x;
    const int width = 3 * h;
    const float epsilon = (float)F32_EPSILON;
    float s = s_in[(i64)i * h + c];
    float v[3];
    for (int x = 0; x < 3; ++x) v[x] = v_in[((i64)i * 3 + x) * h + c];
    float round_off = (fabsf(v[0]) + fabsf(v[1]) + fabsf(v[2])) * epsilon;
    for (i64 e = offsets[i]; e < offsets[i + 1]; ++e) {
        const float* g = geometry + GEOMETRY_WIDTH * e;
        float b[4];
        hermite_basis(g[8], b);
        const float* node_a = table + (i64)g[7] * NODE_VECTORS * width;
        const float* node_b = node_a + NODE_VECTORS * width;
        const float ws = interpolate(node_a, node_b, width, c, b);
        const float wv2 = interpolate(node_a, node_b, width, 2 * h + c, b);
        const i64 j = sources[e];
        s += s_in[j * h + c] * ws;
        // Each term's relative round-off: the arithmetic's, and the edge vector's over d.
        const float relative = epsilon + edge_round_off / g[0];
        if (first_layer) {
            for (int x = 0; x < 3; ++x) v[x] += g[1 + x] * wv2;
            round_off += fabsf(wv2) * relative;
        } else {
            const float wv1 = interpolate(node_a, node_b, width, h + c, b);
            float v_j_magnitude = 0.0f;
            for (int x = 0; x < 3; ++x) {
                const float v_j = v_in[(j * 3 + x) * h + c];
                v[x] += v_j * wv1 + g[1 + x] * wv2;
                v_j_magnitude += fabsf(v_j);
            }
            round_off += (fabsf(wv1) * v_j_magnitude + fabsf(wv2)) * relative;
        }
    }
    s_mid[(i64)i * h + c] = s;
    for (int x = 0; x < 3; ++x) v_mid[((i64)i * 3 + x) * h + c] = v[x];
    concat[(i64)i * 2 * h + h + c] = round_off;
}

// Edges whose per-edge sums over the features (four each) are gathered before one thread per
// edge finishes them: two barriers per batch instead of two per edge.
#define EDGE_BATCH 32

// Gradients of the layer inputs at i, gathered over the row (the reverse edge has the same
// filter): gs_in = gs_mid_i + sum_e gs_mid_j ws, gv_in = gv_mid_i + sum_e gv_mid_j wv1; and
// each edge's dE/dr_ij added to de_dr.
extern "C" __global__ void message_backward(int h, const i64* __restrict__ offsets,
                                            const int* __restrict__ sources,
                                            const float* __restrict__ geometry,
                                            const float* __restrict__ table, float spacing,
                                            const float* __restrict__ s_in,
                                            const float* __restrict__ v_in,
                                            const float* __restrict__ gs_mid,
                                            const float* __restrict__ gv_mid, int need_inputs,
                                            float* __restrict__ gs_in,
                                            float* __restrict__ gv_in,
                                            float* __restrict__ de_dr) {
    // Per edge of the batch, per warp, the warp's sums of the four per-edge values.
    __shared__ float partials[EDGE_BATCH][4][MAX_HIDDEN / 32];
    const int i = blockIdx.x;
    const int c = threadIdx.x;
    const int warp = c >> 5, lane = c & 31, warps = blockDim.x >> 5;
    const int width = 3 * h;
    const float gs_i = gs_mid[(i64)i * h + c];
    float gv_i[3];
    for (int x = 0; x < 3; ++x) gv_i[x] = gv_mid[((i64)i * 3 + x) * h + c];
    float gs = gs_i, gv[3] = {gv_i[0], gv_i[1], gv_i[2]};
    const float inverse_spacing = 1.0f / spacing;
    const i64 row_end = offsets[i + 1];
    for (i64 batch_start = offsets[i]; batch_start < row_end; batch_start += EDGE_BATCH) {
        const int batch = (int)min((i64)EDGE_BATCH, row_end - batch_start);
        for (int slot = 0; slot < batch; ++slot) {
            const i64 e = batch_start + slot;
            const float* g = geometry + GEOMETRY_WIDTH * e;
            float b[4], db[4];
            hermite_basis(g[8], b);
            hermite_basis_derivative(g[8], db);
            for (int q = 0; q < 4; ++q) db[q] *= inverse_spacing;
            const float* node_a = table + (i64)g[7] * NODE_VECTORS * width;
            const float* node_b = node_a + NODE_VECTORS * width;
            const float ws = interpolate(node_a, node_b, width, c, b);
            const float wv1 = interpolate(node_a, node_b, width, h + c, b);
            const float wv2 = interpolate(node_a, node_b, width, 2 * h + c, b);
            const float dws = interpolate_derivative(node_a, node_b, width, c, db);
            const float dwv1 = interpolate_derivative(node_a, node_b, width, h + c, db);
            const float dwv2 = interpolate_derivative(node_a, node_b, width, 2 * h + c, db);
            const i64 j = sources[e];
            if (need_inputs) {
                gs += gs_mid[j * h + c] * ws;
                for (int x = 0; x < 3; ++x) gv[x] += gv_mid[(j * 3 + x) * h + c] * wv1;
            }
            const float s_j = s_in[j * h + c];
            float gw_v1 = 0.0f, gw_v2 = 0.0f;
            for (int x = 0; x < 3; ++x) {
                gw_v1 += gv_i[x] * v_in[(j * 3 + x) * h + c];
                gw_v2 += gv_i[x] * g[1 + x];
            }
            float partial[4] = {gs_i * s_j * dws + gw_v1 * dwv1 + gw_v2 * dwv2, gv_i[0] * wv2,
                                gv_i[1] * wv2, gv_i[2] * wv2};
            // A fixed butterfly within the warp; the warps' sums are added in order below.
            for (int offset = 16; offset > 0; offset >>= 1) {
                for (int q = 0; q < 4; ++q)
                    partial[q] += __shfl_xor_sync(0xffffffffu, partial[q], offset);
            }
            if (lane == 0) {
                for (int q = 0; q < 4; ++q) partials[slot][q][warp] = partial[q];
            }
        }
        __syncthreads();
        if (c < batch) {
            const i64 e = batch_start + c;
            const float* g = geometry + GEOMETRY_WIDTH * e;
            float total[4];
            for (int q = 0; q < 4; ++q) {
                total[q] = 0.0f;
                for (int w = 0; w < warps; ++w) total[q] += partials[c][q][w];
            }
            // u = r / (d + eps): du_x/dr_y = delta_xy / (d + eps) - r_x r_y / (d (d + eps)^2).
            const float d = g[0];
            const float d_eps = d + (float)U_EPSILON;
            const float g_u_dot_r = total[1] * g[4] + total[2] * g[5] + total[3] * g[6];
            const float radial = total[0] / d - g_u_dot_r / (d * d_eps * d_eps);
            for (int x = 0; x < 3; ++x) de_dr[3 * e + x] += radial * g[4 + x] + total[1 + x] / d_eps;
        }
        __syncthreads();  // the next batch reuses `partials`
    }
    if (need_inputs) {
        gs_in[(i64)i * h + c] = gs;
        for (int x = 0; x < 3; ++x) gv_in[((i64)i * 3 + x) * h + c] = gv[x];
    }
}
