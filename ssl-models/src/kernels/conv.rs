//! 2-D convolution on the Flex CPU device, forward and backward as matrix products over the
//! images' patches on the NCHW data (im2col + gemm, as PyTorch's CPU `thnn_conv2d` does).
//!
//! For image `n`, with `cols_n (K, P)` the zero-padded input patches (`K = C * kh * kw` rows in
//! the weight's `(c, i, j)` order, `P = Ho * Wo` output positions) and `dy_n (O, P)`:
//!
//! ```text
//! y_n      = W (O, K) @ cols_n                  (O, P)
//! dW       = sum_n dy_n @ cols_n^T  (O, K)
//! dcols_n  = W^T (K, O) @ dy_n      (K, P),     dx_n = col2im(dcols_n)
//! ```
//!
//! burn's default backward computes `dW` as a convolution of the batch-swapped input with the
//! batch-swapped output gradient as its kernel (an `Ho x Wo` kernel with a `kh x kw` output:
//! an im2col of the whole batch per input channel feeding products a few columns wide) and
//! `dx` as a transposed convolution; here each is one well-shaped product. Images with few
//! output positions are taken several at a time (`B = ceil(128 / P)`, at most a task's share of
//! the batch), their patches side by side in one `cols (K, B * P)` and their outputs reordered
//! from `(O, B * P)`, so that every product has at least ~128 columns: gemm ran a one-image
//! product at `P = 16` (layer3 at 64 px) on its narrowest kernel, and at `P = 4` (layer4) far
//! below peak (forward + backward at batch 32 on 2 cores, ms: 256 -> 256 at 4x4 14.9 -> 9.1,
//! 512 -> 512 at 2x2 55 -> 12.3; 64 and 128 channels at 16x16 and 8x8 unchanged, one image per
//! product). Chunks run in parallel, each task with one patch buffer reused for its chunks; the
//! weight gradient is summed over the tasks in f32, as PyTorch's (the sums run in another
//! order: results agree to float rounding). The forward is ours too: burn-flex's (NHWC copy +
//! tiled im2col) measured slower.
//!
//! [`conv2d`] takes this path for f32 tensors on the Flex device without groups, dilation or
//! bias, and `burn::tensor::module::conv2d` everywhere else.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::{contiguous, dims4, written};
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Stride and symmetric zero padding of a [`conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// `(sh, sw)`.
    pub stride: [usize; 2],
    /// `(ph, pw)`: zeros on each side.
    pub padding: [usize; 2],
}

/// The convolution as a backend extension: Flex runs it, `Autodiff<Flex>` differentiates it as
/// one operation with the backward of this module.
#[backend_extension(Flex, Autodiff)]
pub trait GemmConv2d: Backend {
    /// `x (N, C, H, W)` convolved with `weight (O, C, kh, kw)`.
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self>;
}

fn options(g: ConvGeometry) -> ConvOptions<2> {
    ConvOptions::new(g.stride, g.padding, [1, 1], 1)
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Shape {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    g: ConvGeometry,
}

impl Shape {
    fn new(x: [usize; 4], weight: [usize; 4], g: ConvGeometry) -> Self {
        let [_, c, h, w] = x;
        let [o, _, kh, kw] = weight;
        let ho = (h + 2 * g.padding[0] - kh) / g.stride[0] + 1;
        let wo = (w + 2 * g.padding[1] - kw) / g.stride[1] + 1;
        Self {
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho,
            wo,
            g,
        }
    }
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Whether the patches of an image are the image itself (`cols = x (C, H*W)`): a 1x1
    /// kernel, stride 1, no padding.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.g.stride == [1, 1] && self.g.padding == [0, 0]
    }
    /// `(rows, columns)` of one zero-padded input plane.
    fn padded(&self) -> (usize, usize) {
        (
            self.h + 2 * self.g.padding[0],
            self.w + 2 * self.g.padding[1],
        )
    }
}

/// `dst = src` for the short runs of an image row: fixed-size block copies, which compile to
/// vector moves, where `copy_from_slice` of a run-time length calls `memcpy` (a call per row of
/// 2 to 16 values was a quarter of the patch time).
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let src = &src[..dst.len()];
    let mut blocks = dst.chunks_exact_mut(16);
    let mut from = src.chunks_exact(16);
    for (d, s) in (&mut blocks).zip(&mut from) {
        <&mut [f32; 16]>::try_from(d)
            .unwrap()
            .copy_from_slice(<&[f32; 16]>::try_from(s).unwrap());
    }
    let (d, s) = (blocks.into_remainder(), from.remainder());
    let mut at = 0;
    for width in [8, 4, 2, 1] {
        if d.len() - at >= width {
            d[at..at + width].copy_from_slice(&s[at..at + width]);
            at += width;
        }
    }
}

/// Plane `c` of one image as the patches read it: the plane itself without padding, else a
/// copy with zeros around it in `padded` (whose border the caller zeroed; only the interior is
/// written here).
fn padded_plane<'a>(x: &'a [f32], c: usize, s: &Shape, padded: &'a mut [f32]) -> &'a [f32] {
    let plane = &x[c * s.h * s.w..][..s.h * s.w];
    let [ph, pw] = s.g.padding;
    if ph + pw == 0 {
        return plane;
    }
    let wp = s.padded().1;
    for (r, row) in plane.chunks_exact(s.w).enumerate() {
        copy_run(&mut padded[(r + ph) * wp + pw..][..s.w], row);
    }
    padded
}

/// The patches of one image: `cols (K, P)` from `x (C, H, W)`, zeros outside the image (row
/// `k = (c, i, j)` holds the input each output position multiplies with weight column `k`);
/// row `k` starts at `cols[k * ld]`, so the patches of several images can sit side by side.
/// `buffer` holds one zero-padded plane and, for kernels wider than twice their column stride,
/// its column phases (twice a padded plane in all).
fn im2col(x: &[f32], s: &Shape, cols: &mut [f32], ld: usize, buffer: &mut [f32]) {
    let p = s.p();
    let [sh, sw] = s.g.stride;
    let (hp, wp) = s.padded();
    let (padded, phases) = buffer.split_at_mut(hp * wp);
    if s.g.padding != [0, 0] {
        // the border `padded_plane` leaves alone (without padding it reads `x` itself)
        padded.fill(0.0);
    }
    // With a column stride the inputs of a patch row are every `sw`-th column of the plane;
    // split once into its column phases, each row's runs are contiguous again, so block copies.
    // That pays where each phase serves several kernel columns: the stem's 7x7 / stride 2
    // (forward + backward at batch 32, 64 px: 15.7 -> 12.2 ms), not a 3x3 / stride 2 (4.9 ->
    // 5.0 ms at 16x16, 64 -> 128 channels).
    let split = sw > 1 && s.kw > 2 * sw;
    for c in 0..s.c {
        let plane = padded_plane(x, c, s, padded);
        if split {
            split_phases(plane, (hp, wp), sw.min(s.kw), sw, phases);
        }
        for i in 0..s.kh {
            for j in 0..s.kw {
                let row = &mut cols[((c * s.kh + i) * s.kw + j) * ld..][..p];
                let (at, width) = phase_at(j % sw, (hp, wp), sw);
                for (ho, out) in row.chunks_exact_mut(s.wo).enumerate() {
                    let r = ho * sh + i;
                    if sw == 1 {
                        copy_run(out, &plane[r * wp + j..]);
                    } else if split {
                        copy_run(out, &phases[at + r * width + j / sw..]);
                    } else {
                        let src = &plane[r * wp + j..];
                        for (wo, v) in out.iter_mut().enumerate() {
                            *v = src[wo * sw];
                        }
                    }
                }
            }
        }
    }
}

/// `(offset, columns)` of column phase `q` (columns `q, q + sw, ...` of an `hp x wp` plane)
/// in [`split_phases`]'s output, where the phases lie one after another.
fn phase_at(q: usize, (hp, wp): (usize, usize), sw: usize) -> (usize, usize) {
    let width = |q: usize| (wp - q).div_ceil(sw);
    ((0..q).map(|q| hp * width(q)).sum(), width(q))
}

/// The first `count` column phases of `plane (hp, wp)` for column stride `sw`, one after
/// another (see [`phase_at`]), each `(hp, columns)`.
fn split_phases(plane: &[f32], (hp, wp): (usize, usize), count: usize, sw: usize, out: &mut [f32]) {
    for q in 0..count {
        let (at, width) = phase_at(q, (hp, wp), sw);
        let phase = &mut out[at..][..hp * width];
        for (r, dst) in phase.chunks_exact_mut(width).enumerate() {
            let src = &plane[r * wp + q..];
            for (t, d) in dst.iter_mut().enumerate() {
                *d = src[t * sw];
            }
        }
    }
}

/// The image's input gradient from its patches' gradients `dcols (K, P)` (row `k` at
/// `dcols[k * ld]`): each plane of `dx (C, H, W)` is summed in `padded` and its interior written
/// once, so `dx` needs no zeroing first.
fn col2im(dcols: &[f32], s: &Shape, dx: &mut [MaybeUninit<f32>], ld: usize, padded: &mut [f32]) {
    let p = s.p();
    let [sh, sw] = s.g.stride;
    let [ph, pw] = s.g.padding;
    let wp = s.padded().1;
    for c in 0..s.c {
        padded.fill(0.0);
        for i in 0..s.kh {
            for j in 0..s.kw {
                let row = &dcols[((c * s.kh + i) * s.kw + j) * ld..][..p];
                for (ho, src) in row.chunks_exact(s.wo).enumerate() {
                    let dst = &mut padded[(ho * sh + i) * wp + j..];
                    if sw == 1 {
                        dst[..s.wo].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    } else {
                        for (wo, v) in src.iter().enumerate() {
                            dst[wo * sw] += v;
                        }
                    }
                }
            }
        }
        let plane = &mut dx[c * s.h * s.w..][..s.h * s.w];
        for (r, out) in plane.chunks_exact_mut(s.w).enumerate() {
            let src = &padded[(r + ph) * wp + pw..][..s.w];
            out.iter_mut().zip(src).for_each(|(d, &v)| {
                d.write(v);
            });
        }
    }
}

/// A matrix operand of [`matmul`]: values with their (row stride, column stride).
type Operand<'a> = (&'a [f32], usize, usize);

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)` (`+=` with `accumulate`); `dst` is a unique borrow
/// of `dst_len` values, given as a pointer so that it may be uninitialized without
/// `accumulate` (gemm then only writes it), with its (row stride, column stride).
/// Single-threaded: the callers run images in parallel.
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize, usize),
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
) {
    let extent = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(dst.1 >= extent(m, n, dst.2, dst.3), "matmul: dst too small");
    assert!(
        lhs.0.len() >= extent(m, k, lhs.1, lhs.2),
        "matmul: lhs too small"
    );
    assert!(
        rhs.0.len() >= extent(k, n, rhs.1, rhs.2),
        "matmul: rhs too small"
    );
    // SAFETY: the asserts above keep every addressed element inside its buffer; `dst` comes
    // from a unique borrow of `dst.1` values (see `init_dst` / `uninit_dst`), so it aliases
    // neither operand, and gemm reads it only with `accumulate`, which the callers pass only
    // for initialized values.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.3 as isize,
            dst.2 as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `(pointer, length)` of initialized values, as [`matmul`]'s destination.
fn init_dst(d: &mut [f32]) -> (*mut f32, usize) {
    (d.as_mut_ptr(), d.len())
}

/// `(pointer, length)` of values not written yet, as [`matmul`]'s destination (without
/// `accumulate`).
fn uninit_dst(d: &mut [MaybeUninit<f32>]) -> (*mut f32, usize) {
    (d.as_mut_ptr().cast(), d.len())
}

/// Fewest columns one product gets: images whose outputs have fewer positions than this are
/// convolved several at a time, their patches side by side (`cols (K, B * P)`), so that gemm's
/// widest kernels apply (at `P = 16`, layer3 at 64 px, one image gave gemm a 16-column product
/// that ran on its narrowest kernel).
const PRODUCT_COLUMNS: usize = 128;

/// How the batch is cut: `per_task` images per parallel task, `batch` images per product.
#[derive(Clone, Copy, Debug)]
struct Chunking {
    per_task: usize,
    batch: usize,
}

impl Chunking {
    fn new(images: usize, positions: usize) -> Self {
        let per_task = images.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let batch = PRODUCT_COLUMNS
            .div_ceil(positions.max(1))
            .clamp(1, per_task);
        Self { per_task, batch }
    }
}

/// One thread's buffers: the patches `cols (K, B * P)`, `side`, a `(O, B * P)` block for a
/// chunk's outputs (or output gradients) in product order, and a zero-padded plane with room for
/// its column phases.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    side: Vec<f32>,
    padded: Vec<f32>,
}

impl Scratch {
    /// Grows the buffers to the sizes of `s` with chunks of `batch` images.
    fn fit(&mut self, s: &Shape, batch: usize) {
        let columns = batch * s.p();
        let (hp, wp) = s.padded();
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut self.cols, s.k() * columns);
        grow(&mut self.side, if batch > 1 { s.o * columns } else { 0 });
        grow(&mut self.padded, 2 * hp * wp);
    }
}

thread_local! {
    /// Each thread keeps its buffers between calls (they only grow, to the largest
    /// convolution's patches: a few MiB per thread): allocating and zero-filling them per call
    /// was a pass over every patch matrix.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `per_chunk(first, count, scratch, out, acc)` for the images of the batch in parallel,
/// `count` images at a time (see [`Chunking`]); `out` is the chunk's block of `outputs` (`block`
/// values per image). Returns each task's accumulator.
fn for_each_chunk<T: Send, A: Send>(
    outputs: &mut [T],
    block: usize,
    s: &Shape,
    init: impl Fn() -> A + Sync,
    per_chunk: impl Fn(usize, usize, &mut Scratch, &mut [T], &mut A) + Sync,
) -> Vec<A> {
    let images = outputs.len() / block.max(1);
    let plan = Chunking::new(images, s.p());
    outputs
        .par_chunks_mut(block * plan.per_task)
        .enumerate()
        .map(|(task, chunk)| {
            SCRATCH.with_borrow_mut(|scratch| {
                scratch.fit(s, plan.batch);
                let mut acc = init();
                for (i, out) in chunk.chunks_mut(block * plan.batch).enumerate() {
                    let first = task * plan.per_task + i * plan.batch;
                    per_chunk(first, out.len() / block, scratch, out, &mut acc);
                }
                acc
            })
        })
        .collect()
}

/// The `(O, P)` blocks of `count` images, image after image (NCHW), into product order:
/// `side (O, count * P)` with image `b` in columns `b * P ..`.
fn to_product_order(nchw: &[f32], side: &mut [f32], count: usize, s: &Shape) {
    let (o, p) = (s.o, s.p());
    for b in 0..count {
        for oi in 0..o {
            copy_run(
                &mut side[oi * count * p + b * p..][..p],
                &nchw[(b * o + oi) * p..],
            );
        }
    }
}

/// The inverse of [`to_product_order`], into values not written yet.
fn from_product_order(side: &[f32], nchw: &mut [MaybeUninit<f32>], count: usize, s: &Shape) {
    let (o, p) = (s.o, s.p());
    for b in 0..count {
        for oi in 0..o {
            let src = &side[oi * count * p + b * p..][..p];
            nchw[(b * o + oi) * p..][..p]
                .iter_mut()
                .zip(src)
                .for_each(|(d, &v)| {
                    d.write(v);
                });
        }
    }
}

/// oneDNN's convolution (feature `onednn`), for the stride-1 convolutions with a kernel larger
/// than 1x1, where it measured 1.5-2.4x faster than the products here (docs/results.md); `None`
/// elsewhere or when oneDNN reports an error, and the products here run instead.
#[cfg(feature = "onednn")]
mod onednn {
    use std::os::raw::{c_char, c_int, c_long};

    unsafe extern "C" {
        fn ssl_onednn_conv2d_forward(
            x: *const f32,
            xd: *const c_long,
            w: *const f32,
            wd: *const c_long,
            sh: c_long,
            sw: c_long,
            ph: c_long,
            pw: c_long,
            y: *mut f32,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        fn ssl_onednn_conv2d_backward(
            x: *const f32,
            xd: *const c_long,
            w: *const f32,
            wd: *const c_long,
            dy: *const f32,
            sh: c_long,
            sw: c_long,
            ph: c_long,
            pw: c_long,
            dx: *mut f32,
            dw: *mut f32,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }

    pub(super) fn applies(s: &super::Shape) -> bool {
        s.g.stride == [1, 1] && (s.kh > 1 || s.kw > 1)
    }

    fn dims(d: [usize; 4]) -> [c_long; 4] {
        d.map(|v| v as c_long)
    }

    pub(super) fn forward(
        x: &[f32],
        xd: [usize; 4],
        w: &[f32],
        wd: [usize; 4],
        s: &super::Shape,
    ) -> Option<Vec<f32>> {
        let mut y = vec![0.0f32; xd[0] * s.o * s.p()];
        let mut err = [0 as c_char; 256];
        let (xd, wd) = (dims(xd), dims(wd));
        // SAFETY: the buffers hold the NCHW / OIHW values of the dims passed with them, `y` the
        // output's (N, O, Ho, Wo); the shim reads and writes nothing else.
        let rc = unsafe {
            ssl_onednn_conv2d_forward(
                x.as_ptr(),
                xd.as_ptr(),
                w.as_ptr(),
                wd.as_ptr(),
                s.g.stride[0] as c_long,
                s.g.stride[1] as c_long,
                s.g.padding[0] as c_long,
                s.g.padding[1] as c_long,
                y.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        (rc == 0).then_some(y)
    }

    pub(super) fn backward(
        x: &[f32],
        xd: [usize; 4],
        w: &[f32],
        wd: [usize; 4],
        dy: &[f32],
        s: &super::Shape,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        let mut err = [0 as c_char; 256];
        let (xd, wd) = (dims(xd), dims(wd));
        // SAFETY: as in `forward`; `dy` holds the output's values, `dx` / `dw` the input's and
        // the weight's.
        let rc = unsafe {
            ssl_onednn_conv2d_backward(
                x.as_ptr(),
                xd.as_ptr(),
                w.as_ptr(),
                wd.as_ptr(),
                dy.as_ptr(),
                s.g.stride[0] as c_long,
                s.g.stride[1] as c_long,
                s.g.padding[0] as c_long,
                s.g.padding[1] as c_long,
                dx.as_mut_ptr(),
                dw.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        (rc == 0).then_some((dx, dw))
    }
}

/// The patch matrix `(K, count * P)` of images `first..first + count` of the batch `xs`: the
/// image itself for one image of a pointwise convolution, else their patches side by side in
/// `cols` (built with the padded-plane buffer `padded`).
fn patches<'a>(
    xs: &'a [f32],
    (first, count): (usize, usize),
    s: &Shape,
    cols: &'a mut [f32],
    padded: &mut [f32],
) -> &'a [f32] {
    let image = s.c * s.h * s.w;
    if count == 1 && s.pointwise() {
        return &xs[first * image..][..image];
    }
    let (p, (hp, wp)) = (s.p(), s.padded());
    for b in 0..count {
        let x_n = &xs[(first + b) * image..][..image];
        im2col(
            x_n,
            s,
            &mut cols[b * p..],
            count * p,
            &mut padded[..2 * hp * wp],
        );
    }
    cols
}

/// The convolution, a few images per product: `y_n (O, P) = W (O, K) @ cols_n (K, P)`.
fn forward(x: &FlexTensor, weight: &FlexTensor, g: ConvGeometry) -> FlexTensor {
    let (x, weight) = (contiguous(x), contiguous(weight));
    let (xd, wd) = (dims4(&x), dims4(&weight));
    let s = Shape::new(xd, wd, g);
    #[cfg(feature = "onednn")]
    if onednn::applies(&s) {
        let (xv, wv) = (
            x.as_slice::<f32>().expect("f32"),
            weight.as_slice::<f32>().expect("f32"),
        );
        if let Some(y) = onednn::forward(xv, xd, wv, wd, &s) {
            return FlexTensor::from_data(TensorData::new(y, [xd[0], s.o, s.ho, s.wo]));
        }
    }
    let (k, p, o) = (s.k(), s.p(), s.o);
    let xs = x.as_slice::<f32>().expect("f32");
    let ws = weight.as_slice::<f32>().expect("f32");
    // SAFETY: every chunk's product (one image) or reorder (several) writes the whole block of
    // its images, and the chunks tile `y`.
    let y = unsafe {
        written(xd[0] * o * p, |y| {
            for_each_chunk(
                y,
                o * p,
                &s,
                || (),
                |first, count, scratch, y_chunk, _| {
                    let columns = count * p;
                    let Scratch { cols, side, padded } = scratch;
                    let cols = patches(xs, (first, count), &s, cols, padded);
                    let dst = if count == 1 {
                        uninit_dst(y_chunk)
                    } else {
                        init_dst(side)
                    };
                    let (dst, len) = dst;
                    matmul(
                        (o, columns, k),
                        (dst, len, columns, 1),
                        (ws, k, 1),
                        (cols, columns, 1),
                        false,
                    );
                    if count > 1 {
                        from_product_order(side, y_chunk, count, &s);
                    }
                },
            );
        })
    };
    FlexTensor::from_data(TensorData::new(y, [xd[0], o, s.ho, s.wo]))
}

/// The gradients the graph asks for (`need = (dx, dweight)`) of the convolution of `x` with
/// `weight` for `dy`, a few images per product: `dW += dy_n @ cols_n^T`, `dcols_n = W^T @ dy_n`,
/// `dx_n = col2im(dcols_n)`. The stem's input (the images) needs no gradient: its `dx` would be
/// two thirds of the stem's backward.
fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    dy: &FlexTensor,
    g: ConvGeometry,
    (need_dx, need_dw): (bool, bool),
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (x, weight, dy) = (contiguous(x), contiguous(weight), contiguous(dy));
    let (xd, wd) = (dims4(&x), dims4(&weight));
    let s = Shape::new(xd, wd, g);
    let (k, p, o) = (s.k(), s.p(), s.o);
    let xs = x.as_slice::<f32>().expect("f32");
    let ws = weight.as_slice::<f32>().expect("f32");
    let dys = dy.as_slice::<f32>().expect("f32");
    #[cfg(feature = "onednn")]
    if onednn::applies(&s)
        && let Some((dx, dw)) = onednn::backward(xs, xd, ws, wd, dys, &s)
    {
        return (
            need_dx.then(|| FlexTensor::from_data(TensorData::new(dx, xd))),
            need_dw.then(|| FlexTensor::from_data(TensorData::new(dw, wd))),
        );
    }
    let image = s.c * s.h * s.w;
    let (hp, wp) = s.padded();
    // Without `need_dx` the buffer only cuts the batch into chunks: it is never written, and
    // its pages are never touched.
    let mut dx = Vec::with_capacity(xd[0] * image);
    let partial = for_each_chunk(
        &mut dx.spare_capacity_mut()[..xd[0] * image],
        image,
        &s,
        || Vec::<f32>::with_capacity(o * k),
        |first, count, scratch, dx_chunk, dw| {
            let columns = count * p;
            let Scratch { cols, side, padded } = scratch;
            let dy_chunk = &dys[first * o * p..][..count * o * p];
            let dyc: &[f32] = if count == 1 {
                dy_chunk
            } else {
                to_product_order(dy_chunk, side, count, &s);
                side
            };
            // With a pointwise kernel and one image, the patches are the image and its
            // gradient the patches' gradient: no im2col, no col2im.
            let direct = count == 1 && s.pointwise();
            // dW (O, K) += dy (O, B*P) @ cols^T (B*P, K); the task's first product writes
            // its partial sum, the later ones add to it.
            if need_dw {
                let patches = patches(xs, (first, count), &s, cols, padded);
                let started = !dw.is_empty();
                let (dst, len) = if started {
                    init_dst(dw)
                } else {
                    uninit_dst(&mut dw.spare_capacity_mut()[..o * k])
                };
                let dims = (o, k, columns);
                matmul(
                    dims,
                    (dst, len, k, 1),
                    (dyc, columns, 1),
                    (patches, 1, columns),
                    started,
                );
                if !started {
                    // SAFETY: the product above wrote all `o * k` values.
                    unsafe { dw.set_len(o * k) };
                }
            }
            if !need_dx {
                return;
            }
            // dcols (K, B*P) = W^T (K, O) @ dy (O, B*P), into the patch buffer (or, `direct`,
            // into dx itself)
            let (dst, len) = if direct {
                uninit_dst(dx_chunk)
            } else {
                init_dst(cols)
            };
            matmul(
                (k, columns, o),
                (dst, len, columns, 1),
                (ws, 1, k),
                (dyc, columns, 1),
                false,
            );
            if direct {
                return;
            }
            for b in 0..count {
                let dx_n = &mut dx_chunk[b * image..][..image];
                col2im(&cols[b * p..], &s, dx_n, columns, &mut padded[..hp * wp]);
            }
        },
    );
    let dw = need_dw.then(|| {
        let mut parts = partial.into_iter();
        let mut dw = parts.next().unwrap_or_else(|| vec![0.0; o * k]);
        for part in parts {
            dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
        FlexTensor::from_data(TensorData::new(dw, wd))
    });
    let dx = need_dx.then(|| {
        // SAFETY: with `need_dx` every chunk's `col2im` (or, `direct`, its product) wrote all
        // values of its images, and the chunks tile the buffer.
        unsafe { dx.set_len(xd[0] * image) };
        FlexTensor::from_data(TensorData::new(dx, xd))
    });
    (dx, dw)
}

impl GemmConv2d for Flex {
    fn gemm_conv2d(x: FlexTensor, weight: FlexTensor, geometry: ConvGeometry) -> FlexTensor {
        forward(&x, &weight, geometry)
    }
}

#[derive(Debug)]
struct GemmConv2dBackward;

impl Backward<Flex, 2> for GemmConv2dBackward {
    /// `x`, `weight` and the geometry.
    type State = (FlexTensor, FlexTensor, ConvGeometry);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, weight, g) = ops.state;
        let need = (node_x.is_some(), node_w.is_some());
        let (dx, dw) = backward(&x, &weight, &dy, g, need);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

impl<C: CheckpointStrategy> GemmConv2d for Autodiff<Flex, C> {
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self> {
        let prep = GemmConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        let y = <Flex as GemmConv2d>::gemm_conv2d(x.clone(), weight.clone(), geometry);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, weight, geometry), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `x (N, C, H, W)` convolved with `weight (O, C, kh, kw)` (no bias, groups or dilation),
/// through this module's kernels for f32 tensors on the Flex device (autodiff or not), through
/// `burn::tensor::module::conv2d` elsewhere.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, geometry: ConvGeometry) -> Tensor<4> {
    let on_flex = x.device().inner() == Device::flex();
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let [n, c, h, w] = x.dims();
    let [o, wc, kh, kw] = weight.dims();
    let fits = h + 2 * geometry.padding[0] >= kh
        && w + 2 * geometry.padding[1] >= kw
        && geometry.stride.iter().all(|&s| s > 0)
        && wc == c
        && n * c * o * kh * kw > 0;
    if !on_flex || !f32s || !fits {
        return burn::tensor::module::conv2d(x, weight, None, options(geometry));
    }
    Tensor::from_dispatch(<Dispatch as GemmConv2d>::gemm_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        geometry,
    ))
}
