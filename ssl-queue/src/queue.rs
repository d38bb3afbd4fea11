//! The ring buffer of keys.

use burn::prelude::*;
use burn::tensor::Distribution;

use crate::error::{QueueError, Result};

/// MoCo's queue of negative keys for `scales` scales: a `(scales, dim, K)` tensor (keys are the
/// columns, unit vectors along `dim`) and a write pointer.
///
/// Each step writes the step's keys of all ranks, `(N_all, scales, dim)`, at the pointer
/// (`queue[:, :, p:p+N_all] = keys.permute(1, 2, 0)`) and advances the pointer by `N_all`
/// modulo `K`. As in MoCo, `K` must be a multiple of `N_all`, so a step never wraps in the middle.
#[derive(Debug, Clone)]
pub struct MomentumQueue {
    queue: Tensor<3>,
    ptr: usize,
}

impl MomentumQueue {
    /// A queue of `k` random unit keys per scale on `device`: standard normal values normalized
    /// along `dim` (the reference's `F.normalize(torch.randn(scales, dim, K), dim=1)`), pointer 0.
    /// Draws from the device's RNG (`device.seed(..)` makes it repeat).
    ///
    /// # Errors
    /// [`QueueError::Shape`] when a size is zero.
    pub fn new(scales: usize, dim: usize, k: usize, device: &Device) -> Result<Self> {
        if scales == 0 || dim == 0 || k == 0 {
            return Err(QueueError::Shape(format!(
                "queue sizes must be > 0, got scales = {scales}, dim = {dim}, K = {k}"
            )));
        }
        let raw = Tensor::<3>::random([scales, dim, k], Distribution::Normal(0.0, 1.0), device);
        let norm = raw
            .clone()
            .mul(raw.clone())
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        Ok(Self {
            queue: raw.div(norm),
            ptr: 0,
        })
    }

    /// A queue from its tensor `(scales, dim, K)` and pointer (e.g. from a checkpoint).
    ///
    /// # Errors
    /// [`QueueError::Shape`] for a zero size, [`QueueError::Pointer`] for `ptr >= K`.
    pub fn from_parts(queue: Tensor<3>, ptr: usize) -> Result<Self> {
        let [s, d, k] = queue.dims();
        if s == 0 || d == 0 || k == 0 {
            return Err(QueueError::Shape(format!(
                "queue sizes must be > 0, got {:?}",
                queue.dims()
            )));
        }
        if ptr >= k {
            return Err(QueueError::Pointer { ptr, k });
        }
        Ok(Self { queue, ptr })
    }

    /// A queue from plain values, the inverse of [`MomentumQueue::to_vec`]: `shape` is
    /// `[scales, dim, K]`, `values` row-major.
    ///
    /// # Errors
    /// [`QueueError::Shape`] when `shape` is not three non-zero sizes matching `values.len()`;
    /// [`QueueError::Pointer`] for `ptr >= K`.
    pub fn from_vec(
        shape: &[usize],
        values: Vec<f32>,
        ptr: usize,
        device: &Device,
    ) -> Result<Self> {
        let &[s, d, k] = shape else {
            return Err(QueueError::Shape(format!(
                "queue shape must have 3 sizes, got {shape:?}"
            )));
        };
        if s.checked_mul(d).and_then(|x| x.checked_mul(k)) != Some(values.len()) {
            return Err(QueueError::Shape(format!(
                "shape {shape:?} does not hold {} values",
                values.len()
            )));
        }
        let t = Tensor::<3>::from_data(TensorData::new(values, [s, d, k]), device);
        Self::from_parts(t, ptr)
    }

    /// Shape `[scales, dim, K]` and row-major values, for checkpoints (the pointer is
    /// [`MomentumQueue::ptr`]).
    ///
    /// # Errors
    /// [`QueueError::Read`] if the device read fails.
    pub fn to_vec(&self) -> Result<(Vec<usize>, Vec<f32>)> {
        let values = self
            .queue
            .clone()
            .inner()
            .try_to_vec_as::<f32>()
            .map_err(|e| QueueError::Read(format!("{e:?}")))?;
        Ok((self.queue.dims().to_vec(), values))
    }

    /// Writes `keys` `(N_all, scales, dim)` at the pointer and advances it by `N_all` mod `K`.
    ///
    /// The keys are detached and moved to the queue's device. The write is in place when no
    /// other handle to the queue tensor is alive.
    ///
    /// # Errors
    /// [`QueueError::Shape`] when `keys` is empty or its scales/dim differ from the queue's;
    /// [`QueueError::NotMultiple`] when `K % N_all != 0` (which includes `N_all > K`).
    pub fn enqueue(&mut self, keys: Tensor<3>) -> Result<()> {
        let [s, d, k] = self.queue.dims();
        let [n, ks, kd] = keys.dims();
        if n == 0 || ks != s || kd != d {
            return Err(QueueError::Shape(format!(
                "keys must be (N > 0, {s}, {d}), got {:?}",
                keys.dims()
            )));
        }
        if k % n != 0 {
            return Err(QueueError::NotMultiple { k, n });
        }
        // The pointer only ever advances by multiples of n, but from_parts accepts any pointer.
        if self.ptr + n > k {
            return Err(QueueError::Shape(format!(
                "{n} keys do not fit at pointer {} of a queue of {k}",
                self.ptr
            )));
        }
        let device = self.queue.device();
        let keys = if self.queue.is_autodiff() {
            keys.detach()
        } else {
            keys.inner()
        };
        let keys = if keys.device() == device {
            keys
        } else {
            keys.to_device(&device)
        };
        let cols = keys.permute([1, 2, 0]);
        let p = self.ptr;
        self.queue
            .inplace(|q| q.slice_assign(s![.., .., p..p + n], cols));
        self.ptr = (p + n) % k;
        Ok(())
    }

    /// The queue tensor `(scales, dim, K)` (a cheap handle; drop it before the next
    /// [`MomentumQueue::enqueue`] to let the write happen in place).
    pub fn tensor(&self) -> Tensor<3> {
        self.queue.clone()
    }

    /// The write pointer, in `0..K`.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// The queue length `K`.
    pub fn len(&self) -> usize {
        self.queue.dims()[2]
    }

    /// Always false: a queue holds at least one key per scale.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of scales.
    pub fn scales(&self) -> usize {
        self.queue.dims()[0]
    }

    /// Key dimension.
    pub fn dim(&self) -> usize {
        self.queue.dims()[1]
    }

    /// The device the queue lives on.
    pub fn device(&self) -> Device {
        self.queue.device()
    }

    /// The tensor and the pointer.
    pub fn into_parts(self) -> (Tensor<3>, usize) {
        (self.queue, self.ptr)
    }
}
