//! Stages `message_forward` and `message_backward` on the CPU (mirror `cuda/message.rs` and
//! `cuda/message.cu`): each receiver's sum over its row of edges, forward, and the gradient
//! of the layer's inputs gathered over the same row (the reverse edge has the same filter),
//! with every edge's `dE/dr_ij`, backward. Rows are summed in order (sorted by source):
//! deterministic, no atomics.
//!
//! The inner loops are compiled twice (portable, and AVX2+FMA chosen at run time).
//! Reductions over features run in 8 fixed lanes combined in a fixed order: that lets the
//! compiler vectorise them and keeps the result identical from call to call.

use multiversion::multiversion;

use super::filter::{FilterCache, RowFilter, Scratch};
use super::graph::{EdgeGeometry, Graph};
use super::real::Real;
use super::schedule::Schedule;
use crate::backend::U_EPSILON;
use crate::disjoint::DisjointParts;

/// Atoms per parallel task in the message stages: a function of the atom count only (never
/// of the thread count), so that results do not depend on the number of threads; small
/// molecules still split into a few tasks.
fn atoms_per_task(n_atoms: usize) -> usize {
    (n_atoms / 16).clamp(2, 16)
}

/// What both passes of one layer's message read.
pub struct MessageLayer<'a, T: Real> {
    pub h: usize,
    pub layer: usize,
    pub graph: &'a Graph<T>,
    pub filter: &'a RowFilter<'a, T>,
    pub filters: &'a FilterCache<T>,
    /// The layer's inputs `[n][H]`, `[n][3][H]`.
    pub s_in: &'a [T],
    pub v_in: &'a [T],
}

impl<'a, T: Real> MessageLayer<'a, T> {
    /// Layer `layer` of the model with inputs `(s_in, v_in)`.
    pub fn new(
        h: usize,
        layer: usize,
        graph: &'a Graph<T>,
        filter: &'a RowFilter<'a, T>,
        filters: &'a FilterCache<T>,
        (s_in, v_in): (&'a [T], &'a [T]),
    ) -> Self {
        MessageLayer {
            h,
            layer,
            graph,
            filter,
            filters,
            s_in,
            v_in,
        }
    }
}

impl<T: Real> MessageLayer<'_, T> {
    /// Atom `i`'s row of edges and the filter values (and derivatives, with `derivative`)
    /// its edges read: the filters and the rows of them, as [`FilterCache::rows`].
    #[allow(clippy::type_complexity)]
    fn filter_rows<'s>(
        &'s self,
        i: usize,
        derivative: bool,
        scratch: &'s mut Scratch<T>,
    ) -> (std::ops::Range<usize>, &'s [T], &'s [T], &'s [u32]) {
        let row = self.graph.row(i);
        let (w, dw, filter_rows) = self.filters.rows(
            self.filter,
            self.layer,
            &self.graph.geometry,
            row.clone(),
            derivative,
            scratch,
        );
        (row, w, dw, filter_rows)
    }
}

/// `body(scratch, i, s_row, v_row, concat_row, de_dr_row)` for every atom `i` that
/// `s_rows` holds a row of (all atoms, or the first few), in tasks of a few atoms: `s_row` (`[H]`), `v_row` (`[3][H]`) and `concat_row` (`[2H]`) are atom `i`'s rows
/// of `s_rows`, `v_rows` and `concat_rows` (empty without one), `de_dr_row` its edges' rows
/// of `de_dr` (empty without one).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn for_each_row<T: Real>(
    schedule: Schedule,
    graph: &Graph<T>,
    h: usize,
    s_rows: &mut [T],
    v_rows: &mut [T],
    concat_rows: &mut [T],
    de_dr: &mut [[T; 3]],
    body: impl Fn(&mut Scratch<T>, usize, &mut [T], &mut [T], &mut [T], &mut [[T; 3]]) + Sync + Send,
) {
    let n = s_rows.len() / h;
    debug_assert!(n <= graph.n_atoms());
    let per_task = atoms_per_task(n);
    let with_edges = !de_dr.is_empty();
    let concat_width = if concat_rows.is_empty() { 0 } else { 2 * h };
    let (s_rows, v_rows, concat_rows, de_dr) = (
        DisjointParts::new(s_rows),
        DisjointParts::new(v_rows),
        DisjointParts::new(concat_rows),
        DisjointParts::new(de_dr),
    );
    schedule.for_each_block(n.div_ceil(per_task), Scratch::new, |scratch, task| {
        let atoms = task * per_task..((task + 1) * per_task).min(n);
        let edges = if with_edges {
            graph.offsets[atoms.start]..graph.offsets[atoms.end]
        } else {
            0..0
        };
        // SAFETY: each task takes the rows of its own atoms and their edges.
        let (s_rows, v_rows, mut concat_rows, mut de_dr) = unsafe {
            (
                s_rows.part(atoms.start * h..atoms.end * h),
                v_rows.part(atoms.start * 3 * h..atoms.end * 3 * h),
                concat_rows.part(atoms.start * concat_width..atoms.end * concat_width),
                de_dr.part(edges),
            )
        };
        for (i, (s_row, v_row)) in atoms.clone().zip(
            s_rows
                .chunks_exact_mut(h)
                .zip(v_rows.chunks_exact_mut(3 * h)),
        ) {
            let (concat_row, rest) = concat_rows.split_at_mut(concat_width);
            concat_rows = rest;
            let length = if with_edges { graph.row(i).len() } else { 0 };
            let (de_dr_row, rest) = de_dr.split_at_mut(length);
            de_dr = rest;
            body(scratch, i, s_row, v_row, concat_row, de_dr_row);
        }
    });
}

/// `s_mid = s_i + sum_e s_j ws`, `v_mid = v_i + sum_e (v_j wv1 + u wv2)` over each row
/// (outputs `[rows][H]`, `[rows][3][H]`: all atoms, or the first `rows`), and in the norm half of `concat` (`[n][2H]`, read and
/// replaced by [`norm_concat`](super::update::norm_concat)) `v_mid`'s round-off estimate
/// per feature: `eps sum_x |v_i| + sum_e (|wv1| sum_x |v_j| + |wv2|) (eps + edge_round_off
/// / d)` ([`NORM_ROUND_OFF_FACTOR`](crate::backend::NORM_ROUND_OFF_FACTOR)).
pub fn message_forward<T: Real>(
    schedule: Schedule,
    message: &MessageLayer<'_, T>,
    s_mid: &mut [T],
    v_mid: &mut [T],
    concat: &mut [T],
) {
    let MessageLayer {
        h, layer, graph, ..
    } = *message;
    for_each_row(
        schedule,
        graph,
        h,
        s_mid,
        v_mid,
        concat,
        &mut [],
        |scratch, i, s_out, v_out, concat_out, _| {
            let (row, w, _, filter_rows) = message.filter_rows(i, false, scratch);
            message_row(
                h,
                i,
                &graph.sources[row.clone()],
                &graph.geometry[row],
                w,
                filter_rows,
                message.s_in,
                message.v_in,
                layer == 0,
                s_out,
                v_out,
                T::of(graph.edge_round_off_angstrom),
                &mut concat_out[h..],
            );
        },
    );
}

/// Backward of [`message_forward`]: with `need_inputs` (layers above the first), the
/// gradient of the layer's inputs `gs_in [n][H]`, `gv_in [n][3][H]` from those of its
/// outputs `gs_mid`, `gv_mid`; always, this layer's share of `dE/dr_ij` added to
/// `de_dr [n_edges][3]`.
#[allow(clippy::too_many_arguments)]
pub fn message_backward<T: Real>(
    schedule: Schedule,
    message: &MessageLayer<'_, T>,
    gs_mid: &[T],
    gv_mid: &[T],
    need_inputs: bool,
    gs_in: &mut [T],
    gv_in: &mut [T],
    de_dr: &mut [[T; 3]],
) {
    let MessageLayer { h, graph, .. } = *message;
    for_each_row(
        schedule,
        graph,
        h,
        gs_in,
        gv_in,
        &mut [],
        de_dr,
        |scratch, i, gs_out, gv_out, _, de_dr| {
            let (row, w, dw, filter_rows) = message.filter_rows(i, true, scratch);
            message_backward_row(
                h,
                i,
                &graph.sources[row.clone()],
                &graph.geometry[row],
                w,
                dw,
                filter_rows,
                message.s_in,
                message.v_in,
                gs_mid,
                gv_mid,
                need_inputs,
                T::of(U_EPSILON),
                gs_out,
                gv_out,
                de_dr,
            );
        },
    );
}

/// Lanes of the vectorisable reductions.
const LANES: usize = 8;

/// Message of one receiver row: `s_out = s_i + sum_e s_j * ws`, `v_out = v_i + sum_e (v_j *
/// wv1 + u (x) wv2)`, and `round_off_out` (`[H]`) the round-off estimate of `v_out` (see
/// [`message_forward`]). `w` is `[rows][3H]`, edge `e` reading row `filter_rows[e]`. In
/// the first layer `v_in` is zero and skipped.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn message_row<T: Real>(
    h: usize,
    receiver: usize,
    sources: &[u32],
    edges: &[EdgeGeometry<T>],
    w: &[T],
    filter_rows: &[u32],
    s_in: &[T],
    v_in: &[T],
    first_layer: bool,
    s_out: &mut [T],
    v_out: &mut [T],
    edge_round_off: T,
    round_off_out: &mut [T],
) {
    let s_out = &mut s_out[..h];
    let v_out = &mut v_out[..3 * h];
    let round_off_out = &mut round_off_out[..h];
    s_out.copy_from_slice(&s_in[receiver * h..][..h]);
    v_out.copy_from_slice(&v_in[receiver * 3 * h..][..3 * h]);
    for c in 0..h {
        round_off_out[c] =
            (v_out[c].abs() + v_out[h + c].abs() + v_out[2 * h + c].abs()) * T::epsilon();
    }
    for (e, &j) in sources.iter().enumerate() {
        let j = j as usize;
        let w = &w[filter_rows[e] as usize * 3 * h..][..3 * h];
        let (ws, wv1, wv2) = (&w[..h], &w[h..2 * h], &w[2 * h..3 * h]);
        let s_j = &s_in[j * h..][..h];
        for c in 0..h {
            s_out[c] += s_j[c] * ws[c];
        }
        let u = [edges[e][1], edges[e][2], edges[e][3]];
        for x in 0..3 {
            let v_o = &mut v_out[x * h..][..h];
            let ux = u[x];
            if first_layer {
                for c in 0..h {
                    v_o[c] += ux * wv2[c];
                }
            } else {
                let v_j = &v_in[(j * 3 + x) * h..][..h];
                for c in 0..h {
                    v_o[c] += v_j[c] * wv1[c] + ux * wv2[c];
                }
            }
        }
        // Each term's relative round-off: the arithmetic's, and the edge vector's over d.
        let relative = T::epsilon() + edge_round_off / edges[e][0];
        if first_layer {
            for c in 0..h {
                round_off_out[c] += wv2[c].abs() * relative;
            }
        } else {
            let v_j = &v_in[j * 3 * h..][..3 * h];
            for c in 0..h {
                let v_j_magnitude = v_j[c].abs() + v_j[h + c].abs() + v_j[2 * h + c].abs();
                round_off_out[c] += (wv1[c].abs() * v_j_magnitude + wv2[c].abs()) * relative;
            }
        }
    }
}

/// Backward of the message for one receiver row `i`.
///
/// With `need_inputs`, `gs_out`/`gv_out` get the gradient of the layer's inputs at `i`,
/// gathered over the row (the reverse edge has the same filter): `gs_mid_i + sum_e gs_mid_j *
/// ws`, `gv_mid_i + sum_e gv_mid_j * wv1`. Always, `de_dr[e]` gains this layer's `dE/dr_ij`.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn message_backward_row<T: Real>(
    h: usize,
    receiver: usize,
    sources: &[u32],
    edges: &[EdgeGeometry<T>],
    w: &[T],
    dw: &[T],
    filter_rows: &[u32],
    s_in: &[T],
    v_in: &[T],
    gs_mid: &[T],
    gv_mid: &[T],
    need_inputs: bool,
    u_epsilon: T,
    gs_out: &mut [T],
    gv_out: &mut [T],
    de_dr: &mut [[T; 3]],
) {
    let gs_i = &gs_mid[receiver * h..][..h];
    let gv_i = &gv_mid[receiver * 3 * h..][..3 * h];
    if need_inputs {
        gs_out[..h].copy_from_slice(gs_i);
        gv_out[..3 * h].copy_from_slice(gv_i);
    }
    let lanes_end = h - h % LANES;
    for (e, &j) in sources.iter().enumerate() {
        let j = j as usize;
        let filter_row = filter_rows[e] as usize;
        let w = &w[filter_row * 3 * h..][..3 * h];
        let dw = &dw[filter_row * 3 * h..][..3 * h];
        let (ws, wv1, wv2) = (&w[..h], &w[h..2 * h], &w[2 * h..3 * h]);
        let (dws, dwv1, dwv2) = (&dw[..h], &dw[h..2 * h], &dw[2 * h..3 * h]);
        let s_j = &s_in[j * h..][..h];
        let v_j = &v_in[j * 3 * h..][..3 * h];
        if need_inputs {
            let gs_j = &gs_mid[j * h..][..h];
            let gv_j = &gv_mid[j * 3 * h..][..3 * h];
            let gs_out = &mut gs_out[..h];
            for c in 0..h {
                gs_out[c] += gs_j[c] * ws[c];
            }
            for x in 0..3 {
                let gv_o = &mut gv_out[x * h..][..h];
                let gv_jx = &gv_j[x * h..][..h];
                for c in 0..h {
                    gv_o[c] += gv_jx[c] * wv1[c];
                }
            }
        }
        // dE/dd = sum_c gs_i s_j dws + (sum_x gv_i v_j) dwv1 + (sum_x gv_i u_x) dwv2, and
        // dE/du_x = sum_c gv_i[x] wv2, in fixed lanes.
        let u = [edges[e][1], edges[e][2], edges[e][3]];
        let mut lane_dd = [T::zero(); LANES];
        let mut lane_u = [[T::zero(); LANES]; 3];
        let (gv0, gv1, gv2) = (&gv_i[..h], &gv_i[h..2 * h], &gv_i[2 * h..3 * h]);
        let (v0, v1, v2) = (&v_j[..h], &v_j[h..2 * h], &v_j[2 * h..3 * h]);
        let mut c0 = 0;
        while c0 < lanes_end {
            // Fixed-size views: no bounds checks inside, so the lanes vectorise.
            let gs_i = lanes_of(gs_i, c0);
            let s_j = lanes_of(s_j, c0);
            let (gv0, gv1, gv2) = (lanes_of(gv0, c0), lanes_of(gv1, c0), lanes_of(gv2, c0));
            let (v0, v1, v2) = (lanes_of(v0, c0), lanes_of(v1, c0), lanes_of(v2, c0));
            let (dws, dwv1, dwv2) = (lanes_of(dws, c0), lanes_of(dwv1, c0), lanes_of(dwv2, c0));
            let wv2 = lanes_of(wv2, c0);
            for lane in 0..LANES {
                let gw_s = gs_i[lane] * s_j[lane];
                let gw_v1 = gv0[lane] * v0[lane] + gv1[lane] * v1[lane] + gv2[lane] * v2[lane];
                let gw_v2 = gv0[lane] * u[0] + gv1[lane] * u[1] + gv2[lane] * u[2];
                lane_dd[lane] += gw_s * dws[lane] + gw_v1 * dwv1[lane] + gw_v2 * dwv2[lane];
                lane_u[0][lane] += gv0[lane] * wv2[lane];
                lane_u[1][lane] += gv1[lane] * wv2[lane];
                lane_u[2][lane] += gv2[lane] * wv2[lane];
            }
            c0 += LANES;
        }
        for c in lanes_end..h {
            let gw_s = gs_i[c] * s_j[c];
            let gw_v1 = gv0[c] * v0[c] + gv1[c] * v1[c] + gv2[c] * v2[c];
            let gw_v2 = gv0[c] * u[0] + gv1[c] * u[1] + gv2[c] * u[2];
            lane_dd[0] += gw_s * dws[c] + gw_v1 * dwv1[c] + gw_v2 * dwv2[c];
            lane_u[0][0] += gv0[c] * wv2[c];
            lane_u[1][0] += gv1[c] * wv2[c];
            lane_u[2][0] += gv2[c] * wv2[c];
        }
        let de_dd = sum_lanes(&lane_dd);
        let g_u = [
            sum_lanes(&lane_u[0]),
            sum_lanes(&lane_u[1]),
            sum_lanes(&lane_u[2]),
        ];
        // u = r / (d + eps): du_x/dr_y = delta_xy / (d + eps) - r_x r_y / (d (d + eps)^2).
        let d = edges[e][0];
        let r = [edges[e][4], edges[e][5], edges[e][6]];
        let d_eps = d + u_epsilon;
        let g_u_dot_r = g_u[0] * r[0] + g_u[1] * r[1] + g_u[2] * r[2];
        let radial = de_dd / d - g_u_dot_r / (d * d_eps * d_eps);
        for x in 0..3 {
            de_dr[e][x] += radial * r[x] + g_u[x] / d_eps;
        }
    }
}

/// `values[start..start + LANES]` as a fixed-size array.
#[inline(always)]
fn lanes_of<T>(values: &[T], start: usize) -> &[T; LANES] {
    values[start..start + LANES]
        .try_into()
        .expect("LANES elements")
}

#[inline(always)]
fn sum_lanes<T: Real>(lanes: &[T; LANES]) -> T {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}
