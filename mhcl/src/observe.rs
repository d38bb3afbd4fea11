//! What a run tells the outside while it trains: the [`Observer`] trait and its events, a
//! [`StopToken`] to stop it, and two observers: [`PrintLog`] (the reference scripts' lines)
//! and [`MetricsFile`] (`metrics.json` after every epoch).
//!
//! Only rank 0 of a data-parallel run calls its observer. An observer that returns an error
//! stops the run with it (an unwritable metrics file, say). Observers compose by
//! `Vec<Box<dyn Observer>>`.
//!
//! ```
//! use mhcl::metrics::EpochMetrics;
//! use mhcl::observe::Observer;
//!
//! /// Keeps the loss of every epoch.
//! #[derive(Default)]
//! struct Losses(Vec<f64>);
//!
//! impl Observer for Losses {
//!     fn pretrain_epoch(&mut self, m: &EpochMetrics) -> mhcl::Result<()> {
//!         self.0.push(m.loss);
//!         Ok(())
//!     }
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::Result;
use crate::knn::{KNN_K, KNN_T, KnnResult};
use crate::metrics::{EpochMetrics, LinclsEpoch, LinclsSummary};

/// Asks a running `Pretrainer` / `LinearProbe` to stop: the
/// pretraining stops before its next step and writes a resumable mid-epoch checkpoint, the
/// probe after its current epoch. Clones share the request; the `mhcl` command calls
/// [`StopToken::stop`] from its Ctrl-C handler.
#[derive(Clone, Debug)]
pub struct StopToken(Arc<StopState>);

#[derive(Debug)]
struct StopState {
    stop: AtomicBool,
    before_step: AtomicU64,
}

impl Default for StopToken {
    fn default() -> Self {
        Self(Arc::new(StopState {
            stop: AtomicBool::new(false),
            before_step: AtomicU64::new(u64::MAX),
        }))
    }
}

impl StopToken {
    /// A token nobody has stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the stop.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }

    /// Requests the stop just before global training step `step` (0-based), as if
    /// [`StopToken::stop`] were called then.
    pub fn stop_before_step(&self, step: u64) {
        self.0.before_step.store(step, Ordering::SeqCst);
    }

    /// Whether the stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.0.stop.load(Ordering::SeqCst)
    }

    /// Whether a run about to take global step `step` must stop.
    pub fn stops_before(&self, step: u64) -> bool {
        self.is_stopped() || self.0.before_step.load(Ordering::SeqCst) == step
    }

    /// Withdraws every request (the token can be used for another run).
    pub fn reset(&self) {
        self.0.stop.store(false, Ordering::SeqCst);
        self.0.before_step.store(u64::MAX, Ordering::SeqCst);
    }
}

/// The start of a run, after its data, model and resume state are ready.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStarted {
    /// One line describing it (`=> MHCL resnet50 on cpu (...)`).
    pub description: String,
    /// First epoch (after a resume: the checkpoint's).
    pub start_epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Steps per epoch.
    pub iters_per_epoch: usize,
    /// The run's seed.
    pub seed: u64,
}

/// The start of an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStarted {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Steps of the epoch.
    pub iters: usize,
    /// First step run (non-zero when resuming in mid-epoch).
    pub first_iter: usize,
    /// `"epoch"` for pretraining, `"lincls"` for the probe (the progress-bar prefix).
    pub phase: &'static str,
}

/// The last value and the running mean of a quantity over the epoch (MoCo's `AverageMeter`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Running {
    /// Value of this step.
    pub val: f64,
    /// Mean over the epoch's steps so far, weighted by their images.
    pub avg: f64,
}

/// One training step. `loss` is read back from the device only every
/// `print_freq` steps (reading synchronizes an asynchronous device); `logged` marks those.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Step within the epoch (0-based).
    pub iter: usize,
    /// Steps of the epoch.
    pub iters: usize,
    /// Learning rate.
    pub lr: f64,
    /// A `print_freq` step: `loss` is set and the reference prints a line.
    pub logged: bool,
    /// Loss of the step and mean of the epoch so far (on logged steps).
    pub loss: Option<Running>,
    /// Top-1 accuracy of the layer4 scale (pretraining).
    pub acc1: Option<Running>,
    /// Top-5 accuracy (pretraining).
    pub acc5: Option<Running>,
    /// Seconds of the step, data loading included (pretraining).
    pub batch_time: Option<Running>,
    /// Seconds waiting for the batch (pretraining).
    pub data_time: Option<Running>,
    /// Images per second over the epoch so far, all ranks.
    pub images_per_s: f64,
}

/// Receives the events of a run; every method defaults to doing nothing. See the module docs.
pub trait Observer: Send {
    /// The run starts.
    fn run_started(&mut self, _run: &RunStarted) -> Result<()> {
        Ok(())
    }
    /// An informational line (a loaded checkpoint, skipped images, an ignored setting).
    fn notice(&mut self, _text: &str) -> Result<()> {
        Ok(())
    }
    /// An epoch starts.
    fn epoch_started(&mut self, _epoch: &EpochStarted) -> Result<()> {
        Ok(())
    }
    /// A step is done.
    fn step(&mut self, _step: &StepReport) -> Result<()> {
        Ok(())
    }
    /// The steps of an epoch are done (its reports follow).
    fn epoch_steps_done(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// The kNN monitor of a pretraining epoch.
    fn knn(&mut self, _epoch: usize, _result: &KnnResult) -> Result<()> {
        Ok(())
    }
    /// A pretraining epoch's metrics (one line of `metrics.json`).
    fn pretrain_epoch(&mut self, _metrics: &EpochMetrics) -> Result<()> {
        Ok(())
    }
    /// A checkpoint was written.
    fn checkpoint_saved(&mut self, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// A probe epoch's record and the best (acc@1, acc@5) so far.
    fn probe_epoch(&mut self, _epoch: &LinclsEpoch, _best: (f64, f64)) -> Result<()> {
        Ok(())
    }
    /// The probe's summary (also of `evaluate`).
    fn probe_finished(&mut self, _summary: &LinclsSummary) -> Result<()> {
        Ok(())
    }
    /// The run stopped on its [`StopToken`]; `checkpoint` is what it wrote.
    fn stopped(&mut self, _checkpoint: Option<&Path>) -> Result<()> {
        Ok(())
    }
}

/// Observes nothing.
impl Observer for () {}

macro_rules! forward_all {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        /// Every observer of the list, in order; the first error stops.
        impl Observer for Vec<Box<dyn Observer>> {
            $(fn $method(&mut self, $($arg: $ty),*) -> Result<()> {
                self.iter_mut().try_for_each(|o| o.$method($($arg),*))
            })*
        }
        impl<O: Observer + ?Sized> Observer for &mut O {
            $(fn $method(&mut self, $($arg: $ty),*) -> Result<()> {
                (**self).$method($($arg),*)
            })*
        }
    };
}

forward_all! {
    run_started(run: &RunStarted);
    notice(text: &str);
    epoch_started(epoch: &EpochStarted);
    step(step: &StepReport);
    epoch_steps_done(epoch: usize);
    knn(epoch: usize, result: &KnnResult);
    pretrain_epoch(metrics: &EpochMetrics);
    checkpoint_saved(path: &Path);
    probe_epoch(epoch: &LinclsEpoch, best: (f64, f64));
    probe_finished(summary: &LinclsSummary);
    stopped(checkpoint: Option<&Path>);
}

/// Python's `'{:.4e}'` (two-digit signed exponent), as MoCo's `AverageMeter` prints the loss.
pub fn py_exp(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let s = format!("{x:.digits$e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = exp.parse().unwrap_or(0);
    format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// The line `main_moco.py`'s `ProgressMeter` prints for a logged pretraining step, or
/// `main_lincls.py`'s loss line for a probe step; `None` for a step that is not logged.
pub fn reference_line(s: &StepReport) -> Option<String> {
    let loss = s.loss.filter(|_| s.logged)?;
    let (it, iters, epoch) = (s.iter, s.iters, s.epoch);
    let (Some(bt), Some(dt), Some(a1), Some(a5)) = (s.batch_time, s.data_time, s.acc1, s.acc5)
    else {
        return Some(format!(
            "Epoch: [{epoch}][{it}/{iters}]\tLoss {}",
            py_exp(loss.avg, 4)
        ));
    };
    let width = iters.to_string().len();
    Some(format!(
        "Epoch: [{epoch}][{it:>width$}/{iters}]\tTime {:6.3} ({:6.3})\tData {:6.3} ({:6.3})\tLoss {} ({})\tAcc@1 {:6.2} ({:6.2})\tAcc@5 {:6.2} ({:6.2})",
        bt.val,
        bt.avg,
        dt.val,
        dt.avg,
        py_exp(loss.val, 4),
        py_exp(loss.avg, 4),
        a1.val,
        a1.avg,
        a5.val,
        a5.avg
    ))
}

/// Where [`PrintLog`] writes its lines.
pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// Prints what the reference scripts print (the progress lines every `print_freq` steps, the
/// per-epoch summaries, `best acc1: ...`) plus this crate's notices, one line each, to
/// standard output or to a [`LineSink`].
pub struct PrintLog {
    sink: LineSink,
}

impl Default for PrintLog {
    fn default() -> Self {
        Self::to_stdout()
    }
}

impl PrintLog {
    /// Lines to standard output.
    pub fn to_stdout() -> Self {
        Self::to_sink(Box::new(|line| println!("{line}")))
    }

    /// Lines to `sink` (a progress bar's `println`, a test's buffer).
    pub fn to_sink(sink: LineSink) -> Self {
        Self { sink }
    }

    fn line(&mut self, text: &str) -> Result<()> {
        (self.sink)(text);
        Ok(())
    }
}

impl Observer for PrintLog {
    fn run_started(&mut self, run: &RunStarted) -> Result<()> {
        self.line(&run.description)
    }

    fn notice(&mut self, text: &str) -> Result<()> {
        self.line(text)
    }

    fn step(&mut self, step: &StepReport) -> Result<()> {
        match reference_line(step) {
            Some(l) => self.line(&l),
            None => Ok(()),
        }
    }

    fn knn(&mut self, epoch: usize, r: &KnnResult) -> Result<()> {
        self.line(&format!(
            "kNN (k={KNN_K}, T={KNN_T}) epoch {epoch}: acc@1 {:.2} acc@5 {:.2}",
            r.acc1, r.acc5
        ))
    }

    fn pretrain_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        self.line(&format!(
            "pretrain epoch {} lr {:.5} loss {:.4} acc@1 {:.2} acc@5 {:.2} {:.1}s {:.1} img/s",
            m.epoch, m.lr, m.loss, m.acc1, m.acc5, m.seconds, m.images_per_s
        ))
    }

    fn checkpoint_saved(&mut self, path: &Path) -> Result<()> {
        self.line(&format!("=> saved checkpoint '{}'", path.display()))
    }

    fn probe_epoch(&mut self, e: &LinclsEpoch, (best1, best5): (f64, f64)) -> Result<()> {
        self.line(&format!(
            "lincls epoch {} lr {:.5} loss {:.4} val acc@1 {:.2} acc@5 {:.2} {:.1}s",
            e.epoch, e.lr, e.train_loss, e.val_acc1, e.val_acc5, e.seconds
        ))?;
        self.line(&format!(
            " * Acc@1 {:.3} Acc@5 {:.3}",
            e.val_acc1, e.val_acc5
        ))?;
        self.line(&format!("best acc1: {best1:.3} best acc5: {best5:.3}"))
    }

    fn probe_finished(&mut self, s: &LinclsSummary) -> Result<()> {
        if s.history.is_empty() {
            self.line(&format!(
                " * Acc@1 {:.3} Acc@5 {:.3}",
                s.final_acc1, s.final_acc5
            ))?;
        }
        let json = serde_json::json!({
            "best_acc1": s.best_acc1, "best_acc5": s.best_acc5,
            "final_acc1": s.final_acc1, "final_acc5": s.final_acc5,
        });
        self.line(&json.to_string())
    }
}

/// Writes the pretraining metrics, one [`EpochMetrics`] per epoch, as a JSON array after every
/// epoch (atomically: a reader sees the old file or the new one). A resumed run keeps the
/// records of the epochs before its start.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    records: Vec<EpochMetrics>,
}

impl MetricsFile {
    /// Metrics written to `path` (`PretrainConfig::output.metrics_path()`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            records: Vec::new(),
        }
    }

    /// The records so far.
    pub fn records(&self) -> &[EpochMetrics] {
        &self.records
    }
}

impl Observer for MetricsFile {
    fn run_started(&mut self, run: &RunStarted) -> Result<()> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::data::ensure_writable_dir(parent)?;
        }
        self.records = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<EpochMetrics>>(&b).ok())
            .map(|v| {
                v.into_iter()
                    .filter(|m| m.epoch < run.start_epoch)
                    .collect()
            })
            .unwrap_or_default();
        Ok(())
    }

    fn pretrain_epoch(&mut self, metrics: &EpochMetrics) -> Result<()> {
        self.records.push(metrics.clone());
        let json = serde_json::to_vec_pretty(&self.records)
            .expect("metrics are plain JSON (numbers, strings, lists)");
        ssl_models::weights::write_file_atomic(&self.path, &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_exponent_format() {
        assert_eq!(py_exp(8.12345, 4), "8.1235e+00");
        assert_eq!(py_exp(0.000123, 4), "1.2300e-04");
        assert_eq!(py_exp(12345.0, 4), "1.2345e+04");
    }

    #[test]
    fn a_stop_token_stops_before_the_step_it_names() {
        let t = StopToken::new();
        assert!(!t.stops_before(3));
        t.stop_before_step(3);
        assert!(!t.stops_before(2) && t.stops_before(3));
        t.clone().stop();
        assert!(t.stops_before(0));
        t.reset();
        assert!(!t.stops_before(3));
    }

    #[test]
    fn the_reference_line_is_printed_on_logged_steps_only() {
        let r = Running { val: 1.0, avg: 2.0 };
        let mut s = StepReport {
            epoch: 1,
            iter: 3,
            iters: 10,
            loss: Some(r),
            ..StepReport::default()
        };
        assert_eq!(reference_line(&s), None);
        s.logged = true;
        assert_eq!(
            reference_line(&s).unwrap(),
            "Epoch: [1][3/10]\tLoss 2.0000e+00"
        );
        s.acc1 = Some(r);
        s.acc5 = Some(r);
        s.batch_time = Some(r);
        s.data_time = Some(r);
        assert!(
            reference_line(&s)
                .unwrap()
                .starts_with("Epoch: [1][ 3/10]\tTime  1.000")
        );
    }
}
