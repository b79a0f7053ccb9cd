// A ghost exchange's rows between the layer arrays and one packed staging array, so that
// only the rows that travel cross to the host, in one copy each way
// (src/backend/cuda/exchange.rs). A row is an atom's [s (H), v_x (H), v_y (H), v_z (H)]:
// s [n][H] and v [n][3][H] hold it in two pieces. The atoms are `rows[0..count]`, or, with
// `rows` NULL, the range first..first + count.

// gather != 0: packed[k][4H] = the row of atom k; else the row of atom k = packed[k][4H].
extern "C" __global__ void exchange_rows(int h, int count, const int* __restrict__ rows,
                                         int first, int gather, float* __restrict__ s,
                                         float* __restrict__ v,
                                         float* __restrict__ packed) {
    const i64 width = 4 * (i64)h;
    const i64 total = (i64)count * width;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 r = k / width, c = k % width;
        const i64 atom = rows ? (i64)rows[r] : (i64)first + r;
        float* feature = c < h ? s + atom * h + c : v + atom * 3 * h + (c - h);
        if (gather)
            packed[k] = *feature;
        else
            *feature = packed[k];
    }
}
