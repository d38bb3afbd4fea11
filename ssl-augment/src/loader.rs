//! The parallel batch loader: torch's `DataLoader` + `DistributedSampler`, on threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::bands::BandImage;
use crate::error::{AugmentError, Result, invalid};
use crate::folder::Dataset;
use crate::transforms::SampleTransform;

/// Configuration of a [`Loader`]. Defaults follow PyTorch: batch size 1, no worker thread (the
/// iterating thread loads), prefetch 2 batches per worker (`prefetch_factor=2`),
/// `DistributedSampler`'s `shuffle=True` and `seed=0`, `drop_last=False`, rank 0 of 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads decoding and augmenting (0: the iterating thread does it).
    pub workers: usize,
    /// Seed of the shuffle and of every sample's augmentation.
    pub seed: u64,
    /// Shuffle the order each epoch (by `seed + epoch`, as `DistributedSampler`).
    pub shuffle: bool,
    /// Drop the last batch when it is not full (`DataLoader(drop_last=True)`).
    pub drop_last: bool,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks sharing the dataset.
    pub world_size: usize,
    /// Batches each worker may prepare ahead of the consumer.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            workers: 0,
            seed: 0,
            shuffle: true,
            drop_last: false,
            rank: 0,
            world_size: 1,
            prefetch: 2,
        }
    }
}

impl LoaderConfig {
    /// Sets the batch size.
    pub fn with_batch_size(mut self, v: usize) -> Self {
        self.batch_size = v;
        self
    }

    /// Sets the number of worker threads.
    pub fn with_workers(mut self, v: usize) -> Self {
        self.workers = v;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, v: u64) -> Self {
        self.seed = v;
        self
    }

    /// Sets shuffling.
    pub fn with_shuffle(mut self, v: bool) -> Self {
        self.shuffle = v;
        self
    }

    /// Sets `drop_last`.
    pub fn with_drop_last(mut self, v: bool) -> Self {
        self.drop_last = v;
        self
    }

    /// Sets this process's rank and the world size.
    pub fn with_rank(mut self, rank: usize, world_size: usize) -> Self {
        self.rank = rank;
        self.world_size = world_size;
        self
    }

    /// Sets the prefetch depth (batches per worker).
    pub fn with_prefetch(mut self, v: usize) -> Self {
        self.prefetch = v;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(invalid("loader: batch_size must be positive"));
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(invalid(format!(
                "loader: rank {} is not in [0, world_size = {})",
                self.rank, self.world_size
            )));
        }
        if self.prefetch == 0 {
            return Err(invalid("loader: prefetch must be positive"));
        }
        Ok(())
    }
}

/// One batch: every view as a contiguous NCHW f32 buffer, plus labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// One buffer per view (`views[0]` is the query crop of [`crate::TwoCrops`], `views[1]` the
    /// key crop), each `n * c * h * w` values in NCHW order.
    pub views: Vec<Vec<f32>>,
    /// Samples in the batch.
    pub n: usize,
    /// Channels of each image (3 for RGB, the band count for band images).
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Label of each sample.
    pub labels: Vec<usize>,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of views.
    pub fn num_views(&self) -> usize {
        self.views.len()
    }

    /// The NCHW buffer of view `v`.
    pub fn view(&self, v: usize) -> &[f32] {
        &self.views[v]
    }

    /// `[n, c, h, w]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

/// The generator of one sample's augmentation: a `StdRng` seeded from `(seed, epoch, index,
/// repeat)`, so that a sample's random choices do not depend on the batch size, the number of
/// workers or which thread runs it. `repeat` is 0, or k for the k-th copy `DistributedSampler`
/// pads an epoch with.
pub fn sample_rng(seed: u64, epoch: u64, index: u64, repeat: u64) -> StdRng {
    fn mix(mut z: u64) -> u64 {
        // splitmix64 finalizer
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut h = mix(seed);
    for v in [epoch, index, repeat] {
        h = mix(h ^ mix(v));
    }
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        h = mix(h);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    StdRng::from_seed(key)
}

/// `DistributedSampler(len, num_replicas=world_size, rank, shuffle, seed, drop_last=False)` for
/// one epoch: the order (a permutation drawn from `seed + epoch` when shuffling), padded by
/// repeating its start to a multiple of `world_size`, then every `world_size`-th element from
/// `rank`. Returns `(dataset index, repeat)` pairs; `repeat` counts how often the padding
/// wrapped around.
pub fn distributed_indices(
    len: usize,
    epoch: u64,
    seed: u64,
    shuffle: bool,
    rank: usize,
    world_size: usize,
) -> Vec<(usize, u64)> {
    if len == 0 || world_size == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch)));
    }
    let total = len.div_ceil(world_size) * world_size;
    (rank..total)
        .step_by(world_size)
        .map(|p| (order[p % len], (p / len) as u64))
        .collect()
}

/// The parallel loader: decodes and augments on `workers` threads, yields [`Batch`]es in order.
///
/// Each worker builds whole batches (worker `i` builds batches `i`, `i + workers`, ...) into a
/// bounded queue of `prefetch` batches, as PyTorch's `DataLoader` does. Every sample draws its
/// randomness from [`sample_rng`]`(seed, epoch, index, repeat)`, so 1 and N workers give
/// identical batches.
///
/// [`Loader::new`] loads RGB images, [`Loader::new_bands`] band images
/// ([`crate::bands::BandImage`]); both give the same [`Batch`]es.
pub struct Loader {
    source: Arc<dyn BatchSource>,
    config: LoaderConfig,
    skipped: Arc<SkipLog>,
}

/// Samples a loader dropped because they failed to load: how many, and the first
/// [`SkipLog::KEPT`] errors (each names its file).
#[derive(Debug, Default)]
struct SkipLog {
    count: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

impl SkipLog {
    const KEPT: usize = 1000;

    fn record(&self, e: &AugmentError) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < Self::KEPT {
            errors.push(e.to_string());
        }
    }
}

impl Loader {
    /// A loader of RGB images. Errors on an invalid configuration or an empty dataset.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        transform: Arc<dyn SampleTransform>,
        config: LoaderConfig,
    ) -> Result<Self> {
        Self::with_source(Arc::new(Source { dataset, transform }), config)
    }

    /// A loader of band images. Errors on an invalid configuration or an empty dataset.
    pub fn new_bands(
        dataset: Arc<dyn Dataset<BandImage>>,
        transform: Arc<dyn SampleTransform<BandImage>>,
        config: LoaderConfig,
    ) -> Result<Self> {
        Self::with_source(Arc::new(Source { dataset, transform }), config)
    }

    fn with_source(source: Arc<dyn BatchSource>, config: LoaderConfig) -> Result<Self> {
        config.validate()?;
        if source.len() == 0 {
            return Err(AugmentError::EmptyDataset);
        }
        if source.num_views() == 0 {
            return Err(invalid("loader: the transform gives no view"));
        }
        Ok(Self {
            source,
            config,
            skipped: Arc::new(SkipLog::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Samples in the dataset.
    pub fn dataset_len(&self) -> usize {
        self.source.len()
    }

    /// Samples this rank sees per epoch (`ceil(len / world_size)`).
    pub fn num_samples(&self) -> usize {
        self.source.len().div_ceil(self.config.world_size)
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.num_samples();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// True when an epoch has no batch (`drop_last` with fewer samples than a batch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This rank's `(dataset index, repeat)` order for `epoch` ([`distributed_indices`]).
    pub fn indices(&self, epoch: u64) -> Vec<(usize, u64)> {
        let c = &self.config;
        distributed_indices(
            self.source.len(),
            epoch,
            c.seed,
            c.shuffle,
            c.rank,
            c.world_size,
        )
    }

    /// Samples dropped so far because they failed to load (only with a dataset that skips
    /// corrupt files).
    pub fn skipped(&self) -> usize {
        self.skipped.count.load(Ordering::Relaxed)
    }

    /// The errors of the samples dropped so far (the first 1000), each naming its file, in the
    /// order they happened.
    pub fn skipped_errors(&self) -> Vec<String> {
        self.skipped
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The batches of `epoch`. Worker threads start now and stop when the iterator is dropped.
    /// A failing batch is yielded as an `Err` (naming the file when a file failed); iteration
    /// can go on past it.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let order = self.indices(epoch);
        let bs = self.config.batch_size;
        let mut batches: Vec<Vec<(usize, u64)>> = order.chunks(bs).map(<[_]>::to_vec).collect();
        if self.config.drop_last && batches.last().is_some_and(|b| b.len() < bs) {
            batches.pop();
        }
        let ctx = Arc::new(BatchContext {
            source: Arc::clone(&self.source),
            seed: self.config.seed,
            epoch,
            skipped: Arc::clone(&self.skipped),
        });
        let total = batches.len();
        let batches = Arc::new(batches);
        let workers = self.config.workers.min(total);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = bounded(self.config.prefetch);
            receivers.push(rx);
            let (c, bs, st) = (Arc::clone(&ctx), Arc::clone(&batches), Arc::clone(&stop));
            let handle = std::thread::Builder::new()
                .name(format!("ssl-augment-{w}"))
                .spawn(move || worker(w, workers, &c, &bs, &st, &tx));
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Could not start a thread: the iterator reports it for each batch.
                    return EpochIter {
                        ctx,
                        batches,
                        next: 0,
                        receivers: Vec::new(),
                        handles,
                        stop,
                        spawn_error: Some(e.to_string()),
                    };
                }
            }
        }
        EpochIter {
            ctx,
            batches,
            next: 0,
            receivers,
            handles,
            stop,
            spawn_error: None,
        }
    }
}

/// A dataset and the transform of its images, with the image type erased.
trait BatchSource: Send + Sync {
    fn len(&self) -> usize;
    fn num_views(&self) -> usize;
    /// The batch of dataset `items` (`(index, repeat)`); failing samples of a dataset that
    /// skips corrupt files are recorded in `skipped` and left out.
    fn build(
        &self,
        items: &[(usize, u64)],
        seed: u64,
        epoch: u64,
        skipped: &SkipLog,
    ) -> Result<Batch>;
}

struct Source<I> {
    dataset: Arc<dyn Dataset<I>>,
    transform: Arc<dyn SampleTransform<I>>,
}

impl<I> BatchSource for Source<I> {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn num_views(&self) -> usize {
        self.transform.num_views()
    }

    fn build(
        &self,
        items: &[(usize, u64)],
        seed: u64,
        epoch: u64,
        skipped: &SkipLog,
    ) -> Result<Batch> {
        let nv = self.transform.num_views();
        let c = self.transform.channels();
        let mut hw = self.transform.output_hw();
        let mut views: Vec<Vec<f32>> = Vec::new();
        if let Some((h, w)) = hw {
            views = (0..nv)
                .map(|_| vec![0f32; items.len() * c * h * w])
                .collect();
        }
        let mut labels = Vec::with_capacity(items.len());
        let mut indices = Vec::with_capacity(items.len());
        for &(index, repeat) in items {
            let (img, label) = match self.dataset.get(index) {
                Ok(v) => v,
                Err(e) if self.dataset.skip_corrupt() => {
                    skipped.record(&e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut rng = sample_rng(seed, epoch, index as u64, repeat);
            let slot = labels.len();
            match hw {
                Some((h, w)) => {
                    let per = c * h * w;
                    let mut outs: Vec<&mut [f32]> = views
                        .iter_mut()
                        .map(|v| &mut v[slot * per..(slot + 1) * per])
                        .collect();
                    self.transform.apply_views_into(&img, &mut rng, &mut outs)?;
                }
                None => {
                    let vs = self.transform.apply_views(&img, &mut rng)?;
                    let first = vs.first().map_or((0, 0), |v| (v.height, v.width));
                    let (h, w) = *hw.get_or_insert(first);
                    if views.is_empty() {
                        views = (0..nv)
                            .map(|_| Vec::with_capacity(items.len() * c * h * w))
                            .collect();
                    }
                    for (buf, v) in views.iter_mut().zip(&vs) {
                        if (v.channels, v.height, v.width) != (c, h, w) || vs.len() != nv {
                            return Err(AugmentError::ShapeMismatch {
                                index,
                                got: (vs.len(), v.channels, v.height, v.width),
                                want: (nv, c, h, w),
                            });
                        }
                        buf.extend_from_slice(&v.data);
                    }
                }
            }
            labels.push(label);
            indices.push(index);
        }
        let (h, w) = hw.unwrap_or((0, 0));
        let n = labels.len();
        if views.is_empty() {
            views = vec![Vec::new(); nv];
        }
        for v in &mut views {
            v.truncate(n * c * h * w);
        }
        Ok(Batch {
            views,
            n,
            c,
            h,
            w,
            labels,
            indices,
        })
    }
}

struct BatchContext {
    source: Arc<dyn BatchSource>,
    seed: u64,
    epoch: u64,
    skipped: Arc<SkipLog>,
}

impl BatchContext {
    fn build(&self, items: &[(usize, u64)]) -> Result<Batch> {
        let run = || {
            self.source
                .build(items, self.seed, self.epoch, &self.skipped)
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                Err(AugmentError::Worker(msg))
            }
        }
    }
}

fn worker(
    w: usize,
    workers: usize,
    ctx: &BatchContext,
    batches: &[Vec<(usize, u64)>],
    stop: &AtomicBool,
    tx: &Sender<Result<Batch>>,
) {
    for b in (w..batches.len()).step_by(workers) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let r = ctx.build(&batches[b]);
        if tx.send(r).is_err() {
            return;
        }
    }
}

/// Iterator over one epoch's batches ([`Loader::epoch`]).
pub struct EpochIter {
    ctx: Arc<BatchContext>,
    batches: Arc<Vec<Vec<(usize, u64)>>>,
    next: usize,
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    spawn_error: Option<String>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches.len() {
            return None;
        }
        let b = self.next;
        self.next += 1;
        if let Some(e) = &self.spawn_error {
            return Some(Err(AugmentError::Worker(format!(
                "cannot start a worker thread: {e}"
            ))));
        }
        if self.receivers.is_empty() {
            return Some(self.ctx.build(&self.batches[b]));
        }
        let rx = &self.receivers[b % self.receivers.len()];
        Some(rx.recv().unwrap_or_else(|_| {
            Err(AugmentError::Worker(
                "a worker thread stopped before sending its batch".into(),
            ))
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochIter {}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes blocked senders fail, so the workers return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_pads_and_shards_like_distributed_sampler() {
        // 10 samples, 4 ranks: total 12, padded with the first 2 of the order.
        let all: Vec<Vec<(usize, u64)>> = (0..4)
            .map(|r| distributed_indices(10, 0, 0, false, r, 4))
            .collect();
        assert_eq!(all[0], vec![(0, 0), (4, 0), (8, 0)]);
        assert_eq!(all[1], vec![(1, 0), (5, 0), (9, 0)]);
        assert_eq!(all[2], vec![(2, 0), (6, 0), (0, 1)]);
        assert_eq!(all[3], vec![(3, 0), (7, 0), (1, 1)]);
        // More padding than samples: the order repeats.
        assert_eq!(
            distributed_indices(2, 0, 0, false, 0, 5)
                .into_iter()
                .chain(distributed_indices(2, 0, 0, false, 4, 5))
                .collect::<Vec<_>>(),
            vec![(0, 0), (0, 2)]
        );
    }

    #[test]
    fn shuffle_depends_on_seed_plus_epoch() {
        let a = distributed_indices(50, 3, 7, true, 0, 1);
        let b = distributed_indices(50, 4, 6, true, 0, 1);
        let c = distributed_indices(50, 4, 7, true, 0, 1);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted: Vec<usize> = a.iter().map(|p| p.0).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
