//! MoCo's data-parallel primitives on burn tensors, over any [`ProcessGroup`].
//!
//! The bridge between burn and the group is host memory: a tensor is read with
//! `Tensor::try_into_data` (f32, any float dtype is cast), sent through the group, and the result
//! is created with `Tensor::from_data` on the tensor's device with its dtype. On burn's CPU
//! backends this is a copy; on a GPU backend it is a device-to-host round trip (see
//! `docs/distributed.md` for the GPU path).
//!
//! Results of [`concat_all_gather`], [`batch_shuffle`] and [`batch_unshuffle`] carry no gradient,
//! as in MoCo, where they are applied to the key encoder's input and output only.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::error::{DistributedError, Result};
use crate::group::{ProcessGroup, ReduceOp};

/// Reads a tensor into host memory as f32 values (row-major) plus its dims.
pub fn tensor_to_host<const D: usize>(tensor: Tensor<D>) -> Result<(Vec<f32>, [usize; D])> {
    let dims = tensor.dims();
    let data = tensor.try_into_data().map_err(|e| {
        DistributedError::Tensor(format!("cannot read a tensor of shape {dims:?}: {e:?}"))
    })?;
    let values = data
        .try_into_vec_as::<f32>()
        .map_err(|e| DistributedError::Tensor(format!("cannot read a tensor as f32: {e:?}")))?;
    Ok((values, dims))
}

/// Creates a tensor from host f32 values on `device` with `dtype` (no gradient).
pub fn host_to_tensor<const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    device: &Device,
    dtype: DType,
) -> Result<Tensor<D>> {
    let n: usize = dims.iter().product();
    if n != values.len() {
        return Err(DistributedError::Tensor(format!(
            "{} values do not fill shape {dims:?}",
            values.len()
        )));
    }
    let data = TensorData::new(values, dims);
    if dtype == DType::F32 {
        Ok(Tensor::from_data(data, device))
    } else {
        Ok(Tensor::<D>::from_data(data, device).cast(dtype))
    }
}

/// All-reduces a tensor (element-wise over ranks); the result has no gradient.
pub fn all_reduce_tensor<const D: usize>(
    group: &dyn ProcessGroup,
    tensor: Tensor<D>,
    op: ReduceOp,
) -> Result<Tensor<D>> {
    let (device, dtype) = (tensor.device(), tensor.dtype());
    let (mut v, dims) = tensor_to_host(tensor)?;
    group.all_reduce(&mut v, op)?;
    host_to_tensor(v, dims, &device, dtype)
}

/// Broadcasts `root`'s tensor to every rank (same shape everywhere); no gradient.
pub fn broadcast_tensor<const D: usize>(
    group: &dyn ProcessGroup,
    tensor: Tensor<D>,
    root: usize,
) -> Result<Tensor<D>> {
    let (device, dtype) = (tensor.device(), tensor.dtype());
    let (mut v, dims) = tensor_to_host(tensor)?;
    // Every rank compares every rank's shape, so a mismatch is an error on all of them.
    let tag = shape_tag(&dims);
    let tags = group.all_gather(&tag)?;
    for (r, t) in tags.chunks(tag.len()).enumerate() {
        if t != &tag[..] {
            return Err(DistributedError::SizeMismatch(format!(
                "broadcast_tensor: rank {r} has shape {:?}, rank {} has {dims:?}",
                untag(t),
                group.rank()
            )));
        }
    }
    group
        .broadcast(&mut v, root)
        .map_err(|e| in_op(e, "broadcast_tensor", &dims))?;
    host_to_tensor(v, dims, &device, dtype)
}

/// MoCo's `concat_all_gather`: every rank's tensor concatenated along dim 0 in rank order,
/// without gradient (`torch.distributed.all_gather` has none).
///
/// All ranks must pass the same shape; otherwise every rank gets
/// [`DistributedError::SizeMismatch`] naming both shapes.
pub fn concat_all_gather<const D: usize>(
    group: &dyn ProcessGroup,
    tensor: Tensor<D>,
) -> Result<Tensor<D>> {
    if D == 0 {
        return Err(DistributedError::Tensor(
            "cannot concatenate 0-d tensors".into(),
        ));
    }
    let (device, dtype) = (tensor.device(), tensor.dtype());
    let (mut v, dims) = tensor_to_host(tensor)?;
    let n = v.len();
    let tag = shape_tag(&dims);
    v.extend_from_slice(&tag);
    let all = group
        .all_gather(&v)
        .map_err(|e| in_op(e, "concat_all_gather", &dims))?;
    let chunk = v.len();
    let world = group.world_size();
    let mut out = Vec::with_capacity(n * world);
    for r in 0..world {
        let part = &all[r * chunk..(r + 1) * chunk];
        if part[n..] != tag[..] {
            return Err(DistributedError::SizeMismatch(format!(
                "concat_all_gather: rank {r} has shape {:?}, rank {} has {dims:?}",
                untag(&part[n..]),
                group.rank()
            )));
        }
        out.extend_from_slice(&part[..n]);
    }
    let mut out_dims = dims;
    out_dims[0] *= world;
    host_to_tensor(out, out_dims, &device, dtype)
}

/// The permutation of one shuffle-BN step (MoCo's `idx_shuffle` / `idx_unshuffle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShufflePermutation {
    shuffle: Vec<usize>,
    unshuffle: Vec<usize>,
    rank: usize,
    world: usize,
}

impl ShufflePermutation {
    /// Builds it from `idx_shuffle` (a permutation of `0..batch_all`).
    pub fn new(shuffle: Vec<usize>, rank: usize, world: usize) -> Result<Self> {
        let n = shuffle.len();
        if world == 0 || !n.is_multiple_of(world) {
            return Err(DistributedError::InvalidConfig(format!(
                "a shuffle of {n} samples cannot be split over {world} ranks"
            )));
        }
        let mut unshuffle = vec![usize::MAX; n];
        for (i, &s) in shuffle.iter().enumerate() {
            if s >= n || unshuffle[s] != usize::MAX {
                return Err(DistributedError::Protocol(format!(
                    "idx_shuffle is not a permutation of 0..{n}"
                )));
            }
            unshuffle[s] = i; // argsort of a permutation = its inverse
        }
        Ok(ShufflePermutation {
            shuffle,
            unshuffle,
            rank,
            world,
        })
    }

    /// `idx_shuffle` over the global batch (drawn on rank 0).
    pub fn shuffle(&self) -> &[usize] {
        &self.shuffle
    }

    /// `idx_unshuffle = argsort(idx_shuffle)`.
    pub fn unshuffle(&self) -> &[usize] {
        &self.unshuffle
    }

    /// Per-rank batch size.
    pub fn local_batch(&self) -> usize {
        self.shuffle.len() / self.world
    }

    /// Global indices this rank takes after shuffling: `idx_shuffle.view(world, -1)[rank]`.
    pub fn shuffle_this(&self) -> &[usize] {
        let b = self.local_batch();
        &self.shuffle[self.rank * b..(self.rank + 1) * b]
    }

    /// Global indices this rank takes to undo it: `idx_unshuffle.view(world, -1)[rank]`.
    pub fn unshuffle_this(&self) -> &[usize] {
        let b = self.local_batch();
        &self.unshuffle[self.rank * b..(self.rank + 1) * b]
    }
}

/// MoCo's `_batch_shuffle_ddp`: gathers `x` from all ranks, draws a permutation of the global
/// batch on rank 0 (from `rng`; other ranks do not use theirs) and broadcasts it, and returns
/// this rank's part of the shuffled batch with the permutation needed to undo it.
pub fn batch_shuffle<const D: usize, R: Rng + ?Sized>(
    group: &dyn ProcessGroup,
    x: Tensor<D>,
    rng: &mut R,
) -> Result<(Tensor<D>, ShufflePermutation)> {
    let gathered = concat_all_gather(group, x)?;
    let n = gathered.dims()[0];
    let mut bytes = Vec::new();
    if group.rank() == 0 {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(rng);
        bytes = idx.iter().flat_map(|&i| (i as u64).to_le_bytes()).collect();
    }
    group.broadcast_bytes(&mut bytes, 0)?;
    if bytes.len() != 8 * n {
        return Err(DistributedError::Protocol(format!(
            "received a shuffle of {} bytes for a batch of {n}",
            bytes.len()
        )));
    }
    let idx: Vec<usize> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .collect();
    let perm = ShufflePermutation::new(idx, group.rank(), group.world_size())?;
    let local = select_rows(gathered, perm.shuffle_this());
    Ok((local, perm))
}

/// MoCo's `_batch_unshuffle_ddp`: gathers `x` (this rank's outputs for its shuffled samples)
/// and returns the rows of this rank's original samples, in their original order.
pub fn batch_unshuffle<const D: usize>(
    group: &dyn ProcessGroup,
    x: Tensor<D>,
    perm: &ShufflePermutation,
) -> Result<Tensor<D>> {
    if x.dims()[0] != perm.local_batch() {
        return Err(DistributedError::SizeMismatch(format!(
            "batch_unshuffle: {} rows, but the shuffle gave this rank {}",
            x.dims()[0],
            perm.local_batch()
        )));
    }
    let gathered = concat_all_gather(group, x)?;
    Ok(select_rows(gathered, perm.unshuffle_this()))
}

fn select_rows<const D: usize>(x: Tensor<D>, rows: &[usize]) -> Tensor<D> {
    let device = x.device();
    let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
    x.select(0, idx)
}

/// Averages a module's gradients over the group, as DDP: gradients are flattened into buckets
/// of about `bucket_cap_bytes` (DDP's `bucket_cap_mb = 25`), each bucket is all-reduced with
/// [`ReduceOp::Mean`], and the averaged values replace the gradients.
///
/// Defaults: buckets of 25 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientAverager {
    /// Target bucket size in bytes (f32 values * 4); a larger single gradient is its own bucket.
    pub bucket_cap_bytes: usize,
}

impl Default for GradientAverager {
    fn default() -> Self {
        GradientAverager {
            bucket_cap_bytes: 25 * 1024 * 1024,
        }
    }
}

impl GradientAverager {
    /// The defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the bucket size in bytes (at least 4).
    pub fn with_bucket_cap_bytes(mut self, bytes: usize) -> Self {
        self.bucket_cap_bytes = bytes.max(4);
        self
    }

    /// Averages `grads` (the gradients of `module`'s parameters) over the group.
    ///
    /// Every rank must hold gradients for the same parameters with the same shapes (visit order
    /// of `module`); otherwise every rank gets [`DistributedError::SizeMismatch`].
    pub fn average<M: Module>(
        &self,
        group: &dyn ProcessGroup,
        module: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if group.world_size() == 1 {
            return Ok(grads); // the mean over one rank
        }
        let mut collect = Collect {
            grads: &mut grads,
            entries: Vec::new(),
            flat: Vec::new(),
            error: None,
        };
        module.visit(&mut collect);
        let Collect {
            entries,
            mut flat,
            error,
            ..
        } = collect;
        if let Some(e) = error {
            return Err(e);
        }
        check_same_layout(group, &entries)?;
        let cap = (self.bucket_cap_bytes / 4).max(1);
        let mut start = 0;
        let mut end = 0;
        for e in &entries {
            end = e.offset + e.numel;
            if end - start >= cap {
                group.all_reduce(&mut flat[start..end], ReduceOp::Mean)?;
                start = end;
            }
        }
        if end > start {
            group.all_reduce(&mut flat[start..end], ReduceOp::Mean)?;
        }
        let mut register = Register {
            grads: &mut grads,
            entries: entries.into_iter().map(|e| (e.id, e)).collect(),
            flat: &flat,
            error: None,
        };
        module.visit(&mut register);
        if let Some(e) = register.error {
            return Err(e);
        }
        Ok(grads)
    }
}

/// [`GradientAverager::average`] with the default 25 MiB buckets.
pub fn average_gradients<M: Module>(
    group: &dyn ProcessGroup,
    module: &M,
    grads: GradientsParams,
) -> Result<GradientsParams> {
    GradientAverager::default().average(group, module, grads)
}

struct Entry {
    id: ParamId,
    dims: Vec<usize>,
    device: Device,
    dtype: DType,
    offset: usize,
    numel: usize,
}

struct Collect<'a> {
    grads: &'a mut GradientsParams,
    entries: Vec<Entry>,
    flat: Vec<f32>,
    error: Option<DistributedError>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let (device, dtype) = (grad.device(), grad.dtype());
        match tensor_to_host(grad) {
            Ok((values, dims)) => {
                self.entries.push(Entry {
                    id: param.id,
                    dims: dims.to_vec(),
                    device,
                    dtype,
                    offset: self.flat.len(),
                    numel: values.len(),
                });
                self.flat.extend_from_slice(&values);
            }
            Err(e) => self.error = Some(e),
        }
    }
}

struct Register<'a> {
    grads: &'a mut GradientsParams,
    entries: HashMap<ParamId, Entry>,
    flat: &'a [f32],
    error: Option<DistributedError>,
}

impl ModuleVisitor for Register<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(e) = self.entries.remove(&param.id) else {
            return;
        };
        let Ok(dims) = <[usize; D]>::try_from(e.dims.as_slice()) else {
            self.error = Some(DistributedError::Tensor(format!(
                "gradient of rank {} for a parameter of rank {D}",
                e.dims.len()
            )));
            return;
        };
        let values = self.flat[e.offset..e.offset + e.numel].to_vec();
        match host_to_tensor(values, dims, &e.device, e.dtype) {
            Ok(t) => self.grads.register(param.id, t),
            Err(err) => self.error = Some(err),
        }
    }
}

/// Checks that every rank has gradients of the same shapes in the same order.
fn check_same_layout(group: &dyn ProcessGroup, entries: &[Entry]) -> Result<()> {
    // FNV-1a over the shapes; count and total size in the clear for the message.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut total = 0usize;
    for e in entries {
        total += e.numel;
        for &d in e.dims.iter().chain(std::iter::once(&usize::MAX)) {
            for b in (d as u64).to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let mut tag = shape_tag(&[entries.len(), total]);
    tag.extend((0..4).map(|i| ((h >> (16 * i)) & 0xffff) as f32));
    let all = group.all_gather(&tag)?;
    for (r, part) in all.chunks(tag.len()).enumerate() {
        if part != &tag[..] {
            let theirs = untag(&part[..part.len() - 4]);
            return Err(DistributedError::SizeMismatch(format!(
                "average_gradients: rank {r} has {} gradients with {} values (or other shapes), \
                 rank {} has {} with {total}",
                theirs.first().copied().unwrap_or(0),
                theirs.get(1).copied().unwrap_or(0),
                group.rank(),
                entries.len()
            )));
        }
    }
    Ok(())
}

/// Encodes dims exactly as f32 values (24-bit limbs): `[rank, hi0, lo0, hi1, lo1, ...]`.
fn shape_tag(dims: &[usize]) -> Vec<f32> {
    let mut tag = Vec::with_capacity(1 + 2 * dims.len());
    tag.push(dims.len() as f32);
    for &d in dims {
        let d = d as u64;
        tag.push(((d >> 24) & 0xff_ffff) as f32);
        tag.push((d & 0xff_ffff) as f32);
    }
    tag
}

fn untag(tag: &[f32]) -> Vec<usize> {
    tag.get(1..)
        .unwrap_or(&[])
        .chunks(2)
        .map(|c| ((c[0] as u64) << 24 | c.get(1).copied().unwrap_or(0.0) as u64) as usize)
        .collect()
}

fn in_op(e: DistributedError, op: &str, dims: &[usize]) -> DistributedError {
    match e {
        DistributedError::SizeMismatch(m) => {
            DistributedError::SizeMismatch(format!("{op} of a tensor of shape {dims:?}: {m}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_tags_are_exact() {
        for dims in [vec![0usize], vec![3, 4], vec![1 << 30, 7, (1 << 40) + 3]] {
            assert_eq!(untag(&shape_tag(&dims)), dims);
        }
    }

    #[test]
    fn permutation_checks() {
        let p = ShufflePermutation::new(vec![2, 0, 3, 1], 1, 2).unwrap();
        assert_eq!(p.unshuffle(), &[1, 3, 0, 2]);
        assert_eq!(p.shuffle_this(), &[3, 1]);
        assert_eq!(p.unshuffle_this(), &[0, 2]);
        assert!(ShufflePermutation::new(vec![0, 0], 0, 1).is_err());
        assert!(ShufflePermutation::new(vec![0, 1, 2], 0, 2).is_err());
    }
}
