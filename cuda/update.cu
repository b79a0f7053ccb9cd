// Per-atom stages around the update MLP: embedding, |v| and the MLP input, gating of s and v,
// and their backward passes. One thread per (atom, feature); v is [n][3][H].

extern "C" __global__ void embed(int n, int h, const int* __restrict__ atomic_numbers,
                                 const float* __restrict__ embedding, float* __restrict__ s) {
    const i64 count = (i64)n * h;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / h, c = k % h;
        s[k] = embedding[(i64)atomic_numbers[i] * h + c];
    }
}

// concat = [s_mid, |v_mid|] ([n][2H], norm over x, y, z) and norm = |v_mid|, kept for the
// gradient; a feature of v_mid whose norm is zero to round-off (at most NORM_ROUND_OFF_FACTOR
// x the estimate message_forward left in concat's norm half) is set to 0 with its norm, as
// cpu/update.rs.
extern "C" __global__ void norm_concat(int n, int h, const float* __restrict__ s_mid,
                                       float* __restrict__ v_mid, float* __restrict__ norm,
                                       float* __restrict__ concat) {
    const i64 count = (i64)n * h;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / h, c = k % h;
        float* v = v_mid + i * 3 * h;
        float value = sqrtf(v[c] * v[c] + v[h + c] * v[h + c] + v[2 * h + c] * v[2 * h + c]);
        const float round_off = concat[i * 2 * h + h + c];
        if (!(value > (float)NORM_ROUND_OFF_FACTOR * round_off)) {
            value = 0.0f;
            for (int x = 0; x < 3; ++x) v[x * h + c] = 0.0f;
        }
        norm[k] = value;
        concat[i * 2 * h + c] = s_mid[k];
        concat[i * 2 * h + h + c] = value;
    }
}

// s_next = s_mid + a_s; v_next = v_mid a_v1 + (M v_mid) a_v2 (skipped when v_next is null:
// the last layer). update_out is [n][a_width] (3H, or H for the last layer).
extern "C" __global__ void gate_forward(int n, int h, int a_width, const float* __restrict__ s_mid,
                                        const float* __restrict__ v_mid,
                                        const float* __restrict__ update_out, const float* mixing,
                                        float* __restrict__ s_next, float* __restrict__ v_next) {
    const i64 count = (i64)n * h;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / h, c = k % h;
        const float* a = update_out + i * a_width;
        s_next[k] = s_mid[k] + a[c];
        if (v_next) {
            const float* vm = v_mid + i * 3 * h;
            for (int x = 0; x < 3; ++x) {
                const float mixed =
                    mixing[3 * x] * vm[c] + mixing[3 * x + 1] * vm[h + c] + mixing[3 * x + 2] * vm[2 * h + c];
                v_next[(i * 3 + x) * h + c] = vm[x * h + c] * a[h + c] + mixed * a[2 * h + c];
            }
        }
    }
}

// Backward of gate_forward: g_update (gradient of the MLP output) and gv_mid (gradient of
// v_mid through the gates; the norm's share is added by norm_backward).
extern "C" __global__ void gate_backward(int n, int h, int a_width, int last,
                                         const float* __restrict__ v_mid,
                                         const float* __restrict__ update_out,
                                         const float* mixing, const float* __restrict__ gs,
                                         const float* __restrict__ gv,
                                         float* __restrict__ g_update,
                                         float* __restrict__ gv_mid) {
    const i64 count = (i64)n * h;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / h, c = k % h;
        g_update[i * a_width + c] = gs[k];
        if (last) {
            for (int x = 0; x < 3; ++x) gv_mid[(i * 3 + x) * h + c] = 0.0f;
            continue;
        }
        const float* a = update_out + i * a_width;
        const float* vm = v_mid + i * 3 * h;
        const float* go = gv + i * 3 * h;
        float g_av1 = 0.0f, g_av2 = 0.0f;
        for (int x = 0; x < 3; ++x) {
            const float mixed =
                mixing[3 * x] * vm[c] + mixing[3 * x + 1] * vm[h + c] + mixing[3 * x + 2] * vm[2 * h + c];
            g_av1 += go[x * h + c] * vm[x * h + c];
            g_av2 += go[x * h + c] * mixed;
        }
        g_update[i * a_width + h + c] = g_av1;
        g_update[i * a_width + 2 * h + c] = g_av2;
        for (int x = 0; x < 3; ++x) {
            const float back_mixed =
                mixing[x] * go[c] + mixing[3 + x] * go[h + c] + mixing[6 + x] * go[2 * h + c];
            gv_mid[(i * 3 + x) * h + c] = go[x * h + c] * a[h + c] + back_mixed * a[2 * h + c];
        }
    }
}

// gs_mid = gs + g_concat[:, :H]; gv_mid += g_concat[:, H:] v_mid / norm (0 where norm is 0:
// v = 0 to round-off).
extern "C" __global__ void norm_backward(int n, int h, const float* __restrict__ gs,
                                         const float* __restrict__ g_concat,
                                         const float* __restrict__ norm,
                                         const float* __restrict__ v_mid,
                                         float* __restrict__ gs_mid,
                                         float* __restrict__ gv_mid) {
    const i64 count = (i64)n * h;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / h, c = k % h;
        const float* gc = g_concat + i * 2 * h;
        gs_mid[k] = gs[k] + gc[c];
        if (norm[k] > 0.0f) {
            const float scale = gc[h + c] / norm[k];
            for (int x = 0; x < 3; ++x) gv_mid[(i * 3 + x) * h + c] += scale * v_mid[(i * 3 + x) * h + c];
        }
    }
}
