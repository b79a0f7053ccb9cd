// Exclusive prefix sums of 64-bit integers: counts -> offsets. Three launches per level
// (blocks, block sums, add back); the host recurses over levels. Integer sums: exact and
// deterministic.

// Elements per block (and threads per block) of scan_blocks and scan_add.
#ifndef SCAN_BLOCK
#error "SCAN_BLOCK must be defined by the host (-DSCAN_BLOCK=...)"
#endif

// In place, per block of SCAN_BLOCK elements: exclusive scan; the block's total goes to
// block_sums[blockIdx.x].
extern "C" __global__ void scan_blocks(i64* __restrict__ data, i64 count,
                                       i64* __restrict__ block_sums) {
    __shared__ i64 buffer[SCAN_BLOCK];
    const i64 index = (i64)blockIdx.x * SCAN_BLOCK + threadIdx.x;
    const i64 value = index < count ? data[index] : 0;
    buffer[threadIdx.x] = value;
    __syncthreads();
    for (int offset = 1; offset < SCAN_BLOCK; offset <<= 1) {
        const i64 add = threadIdx.x >= offset ? buffer[threadIdx.x - offset] : 0;
        __syncthreads();
        buffer[threadIdx.x] += add;
        __syncthreads();
    }
    if (index < count) data[index] = buffer[threadIdx.x] - value;
    if (threadIdx.x == SCAN_BLOCK - 1) block_sums[blockIdx.x] = buffer[threadIdx.x];
}

// Adds each block's (scanned) offset to its elements.
extern "C" __global__ void scan_add(i64* __restrict__ data, i64 count,
                                    const i64* __restrict__ block_offsets) {
    const i64 index = (i64)blockIdx.x * SCAN_BLOCK + threadIdx.x;
    if (index < count) data[index] += block_offsets[blockIdx.x];
}
