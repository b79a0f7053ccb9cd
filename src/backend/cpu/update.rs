//! The per-atom stages of each layer on the CPU (mirror `cuda/update.rs` and
//! `cuda/update.cu`): the embedding, `|v|` and the update MLP's input (`norm_concat`), the
//! update MLP (`update_mlp`), the gates on `s` and `v` (`gate_forward`), and their backward
//! passes in reverse (`gate_backward`, `update_mlp_backward`, `norm_backward`). `v` is laid
//! out `[n][3][H]`.

use super::LayerWeights;
use super::real::Real;
use super::schedule::Schedule;
use crate::backend::NORM_ROUND_OFF_FACTOR;

/// `s [n][H]` = the embedding row of each atom's atomic number.
pub fn embed<T: Real>(h: usize, atomic_numbers: &[i32], embedding: &[T], s: &mut Vec<T>) {
    s.clear();
    for &z in atomic_numbers {
        let z = z as usize;
        s.extend_from_slice(&embedding[z * h..(z + 1) * h]);
    }
}

/// `concat [n][2H] = [s_mid, |v_mid|]` (norm over x, y, z) and `norm [n][H] = |v_mid|`, kept
/// for the gradient. A feature of `v_mid` whose norm is zero to round-off (at most
/// [`NORM_ROUND_OFF_FACTOR`] x the round-off estimate that
/// [`message_forward`](super::message::message_forward) left in the norm half of `concat`)
/// is set to 0, as is its norm: the spec's `v = 0`, whose gradient [`norm_backward`] takes
/// as 0.
pub fn norm_concat<T: Real>(
    schedule: Schedule,
    h: usize,
    s_mid: &[T],
    v_mid: &mut [T],
    norm: &mut [T],
    concat: &mut [T],
) {
    let factor = T::of(NORM_ROUND_OFF_FACTOR);
    schedule.for_each_chunk_pair(v_mid, 3 * h, concat, 2 * h, |i, v, concat| {
        let (s_half, norm_half) = concat.split_at_mut(h);
        s_half.copy_from_slice(&s_mid[i * h..(i + 1) * h]);
        for c in 0..h {
            let value = (v[c] * v[c] + v[h + c] * v[h + c] + v[2 * h + c] * v[2 * h + c]).sqrt();
            // The message left v_mid's round-off estimate in the norm half.
            let round_off = norm_half[c];
            if value > factor * round_off {
                norm_half[c] = value;
            } else {
                norm_half[c] = T::zero();
                for x in 0..3 {
                    v[x * h + c] = T::zero();
                }
            }
        }
    });
    schedule.for_each_chunk_into(concat, 2 * h, norm, h, |concat, norm| {
        norm.copy_from_slice(&concat[h..]);
    });
}

/// `update_out = W2 silu(W1 concat + b1) + b2`, keeping the pre-activation `[n][H]`, its
/// sigmoid (for SiLU's derivative without a second exponential) and the hidden activation.
#[allow(clippy::too_many_arguments)]
pub fn update_mlp<T: Real>(
    schedule: Schedule,
    weights: &LayerWeights<T>,
    concat: &[T],
    update_pre: &mut Vec<T>,
    update_sigmoid: &mut Vec<T>,
    hidden: &mut Vec<T>,
    update_out: &mut Vec<T>,
) {
    let n = concat.len() / weights.update_hidden.n_in;
    update_pre.resize(n * weights.update_hidden.n_out, T::zero());
    weights.update_hidden.forward(schedule, concat, update_pre);
    silu_keeping_sigmoid(update_pre, update_sigmoid, hidden);
    update_out.resize(n * weights.update_out.n_out, T::zero());
    weights.update_out.forward(schedule, hidden, update_out);
}

/// `s_next = s_mid + a_s`; `v_next = v_mid a_v1 + (M v_mid) a_v2` (none after the last
/// layer). `update_out` is `[n][a_width]` (3H, or H for the last layer).
#[allow(clippy::too_many_arguments)]
pub fn gate_forward<T: Real>(
    schedule: Schedule,
    h: usize,
    a_width: usize,
    s_mid: &[T],
    v_mid: &[T],
    update_out: &[T],
    mixing: [[T; 3]; 3],
    s_next: &mut [T],
    v_next: Option<&mut [T]>,
) {
    schedule.for_each_chunk(s_next, h, |i, s| {
        let a = &update_out[i * a_width..i * a_width + h];
        let s_mid = &s_mid[i * h..(i + 1) * h];
        for c in 0..h {
            s[c] = s_mid[c] + a[c];
        }
    });
    if let Some(v_next) = v_next {
        let m = mixing;
        schedule.for_each_chunk(v_next, 3 * h, |i, v| {
            let a = &update_out[i * 3 * h..(i + 1) * 3 * h];
            let (av1, av2) = (&a[h..2 * h], &a[2 * h..]);
            let vm = &v_mid[i * 3 * h..(i + 1) * 3 * h];
            for x in 0..3 {
                for c in 0..h {
                    let mixed = m[x][0] * vm[c] + m[x][1] * vm[h + c] + m[x][2] * vm[2 * h + c];
                    v[x * h + c] = vm[x * h + c] * av1[c] + mixed * av2[c];
                }
            }
        });
    }
}

/// Backward of [`gate_forward`]: from the gradients of the layer's outputs `gs`, `gv`, the
/// gradient of the update MLP's output `g_update [n][a_width]` and the gates' share of
/// `gv_mid [n][3][H]` (the norm's share is added by [`norm_backward`]).
#[allow(clippy::too_many_arguments)]
pub fn gate_backward<T: Real>(
    schedule: Schedule,
    h: usize,
    a_width: usize,
    last: bool,
    v_mid: &[T],
    update_out: &[T],
    mixing: [[T; 3]; 3],
    gs: &[T],
    gv: &[T],
    g_update: &mut [T],
    gv_mid: &mut [T],
) {
    let m = mixing;
    schedule.for_each_chunk_pair(g_update, a_width, gv_mid, 3 * h, |i, g_a, gv_mid| {
        g_a[..h].copy_from_slice(&gs[i * h..(i + 1) * h]);
        if last {
            // The last layer's vectors never reach the energy.
            gv_mid.fill(T::zero());
            return;
        }
        let a = &update_out[i * 3 * h..(i + 1) * 3 * h];
        let (av1, av2) = (&a[h..2 * h], &a[2 * h..]);
        let vm = &v_mid[i * 3 * h..(i + 1) * 3 * h];
        let gv_out = &gv[i * 3 * h..(i + 1) * 3 * h];
        for c in 0..h {
            let mut g_av1 = T::zero();
            let mut g_av2 = T::zero();
            for x in 0..3 {
                let mixed = m[x][0] * vm[c] + m[x][1] * vm[h + c] + m[x][2] * vm[2 * h + c];
                g_av1 += gv_out[x * h + c] * vm[x * h + c];
                g_av2 += gv_out[x * h + c] * mixed;
            }
            g_a[h + c] = g_av1;
            g_a[2 * h + c] = g_av2;
            for x in 0..3 {
                let back_mixed =
                    m[0][x] * gv_out[c] + m[1][x] * gv_out[h + c] + m[2][x] * gv_out[2 * h + c];
                gv_mid[x * h + c] = gv_out[x * h + c] * av1[c] + back_mixed * av2[c];
            }
        }
    });
}

/// Backward of [`update_mlp`]: `g_concat [n][2H]` from `g_update`, through the saved
/// pre-activation and its sigmoid.
pub fn update_mlp_backward<T: Real>(
    schedule: Schedule,
    weights: &LayerWeights<T>,
    g_update: &[T],
    update_pre: &[T],
    update_sigmoid: &[T],
    g_hidden: &mut Vec<T>,
    g_concat: &mut Vec<T>,
) {
    let n = g_update.len() / weights.update_out.n_out;
    g_hidden.resize(n * weights.update_out.n_in, T::zero());
    weights
        .update_out
        .backward(schedule, g_update, g_hidden, false);
    for ((g, &pre), &sigmoid) in g_hidden.iter_mut().zip(update_pre).zip(update_sigmoid) {
        *g *= silu_derivative_from(pre, sigmoid);
    }
    g_concat.resize(n * weights.update_hidden.n_in, T::zero());
    weights
        .update_hidden
        .backward(schedule, g_hidden, g_concat, false);
}

/// Backward of [`norm_concat`] with the skip connection: `gs_mid = gs + g_concat[..H]` and
/// `gv_mid += g_concat[H..] v_mid / norm` (the gradient taken as 0 where `norm` is 0: at
/// `v = 0`, and where `|v|` is zero to round-off).
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<T: Real>(
    schedule: Schedule,
    h: usize,
    gs: &[T],
    g_concat: &[T],
    norm: &[T],
    v_mid: &[T],
    gs_mid: &mut [T],
    gv_mid: &mut [T],
) {
    schedule.for_each_chunk_pair(gs_mid, h, gv_mid, 3 * h, |i, gs_mid, gv_mid| {
        let gc = &g_concat[i * 2 * h..(i + 1) * 2 * h];
        let gs_out = &gs[i * h..(i + 1) * h];
        let norm = &norm[i * h..(i + 1) * h];
        let vm = &v_mid[i * 3 * h..(i + 1) * 3 * h];
        for c in 0..h {
            gs_mid[c] = gs_out[c] + gc[c];
            // d|v|/dv = v / |v|, taken as 0 where v = 0 to round-off.
            if norm[c] > T::zero() {
                let scale = gc[h + c] / norm[c];
                for x in 0..3 {
                    gv_mid[x * h + c] += scale * vm[x * h + c];
                }
            }
        }
    });
}

/// `out = silu(pre) = pre * sigmoid(pre)`, keeping `sigmoid(pre)` for the backward pass.
pub fn silu_keeping_sigmoid<T: Real>(pre: &[T], sigmoid: &mut Vec<T>, out: &mut Vec<T>) {
    sigmoid.clear();
    sigmoid.extend(pre.iter().map(|&x| T::one() / (T::one() + (-x).exp())));
    out.clear();
    out.extend(pre.iter().zip(sigmoid.iter()).map(|(&x, &s)| x * s));
}

/// `d silu / dx` at `x` from `s = sigmoid(x)`.
#[inline]
pub fn silu_derivative_from<T: Real>(x: T, s: T) -> T {
    s * (T::one() + x * (T::one() - s))
}
