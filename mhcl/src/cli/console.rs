//! The command's observers: an indicatif progress bar per epoch (on a terminal, unless
//! `--no-progress`), the reference's lines through the bar ([`PrintLog`]), `metrics.json`
//! ([`MetricsFile`]); and the Ctrl-C handler.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::PretrainConfig;
use crate::error::Result;
use crate::observe::{EpochStarted, MetricsFile, Observer, PrintLog, StepReport, StopToken};

/// The bar of the running epoch, shared with the log so that lines print above it.
type BarSlot = Arc<Mutex<Option<ProgressBar>>>;

/// One indicatif bar per epoch with the running loss, accuracy, lr and images/s.
pub struct ProgressObserver {
    slot: BarSlot,
    loss_avg: f64,
}

impl ProgressObserver {
    fn bar(&self) -> Option<ProgressBar> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Observer for ProgressObserver {
    fn epoch_started(&mut self, e: &EpochStarted) -> Result<()> {
        let b = ProgressBar::with_draw_target(Some(e.iters as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(format!("{} {}", e.phase, e.epoch));
        b.set_position(e.first_iter as u64);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
        self.loss_avg = 0.0;
        Ok(())
    }

    fn step(&mut self, s: &StepReport) -> Result<()> {
        if let Some(l) = s.loss {
            self.loss_avg = l.avg;
        }
        if let Some(b) = self.bar() {
            if let Some(a1) = s.acc1 {
                b.set_message(format!(
                    "loss {:.4} acc@1 {:.2} lr {:.5} {:.1} img/s",
                    self.loss_avg, a1.avg, s.lr, s.images_per_s
                ));
            }
            b.inc(1);
        }
        Ok(())
    }

    fn epoch_steps_done(&mut self, _epoch: usize) -> Result<()> {
        if let Some(b) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
        Ok(())
    }

    fn stopped(&mut self, _checkpoint: Option<&Path>) -> Result<()> {
        if let Some(b) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.abandon();
        }
        Ok(())
    }
}

/// The log and, on a terminal without `--no-progress`, the bar it prints through.
fn console(no_progress: bool) -> Vec<Box<dyn Observer>> {
    let slot: BarSlot = Arc::default();
    let sink_slot = Arc::clone(&slot);
    let log = PrintLog::to_sink(Box::new(move |line| {
        match sink_slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => println!("{line}"),
        }
    }));
    let mut observers: Vec<Box<dyn Observer>> = vec![Box::new(log)];
    if !no_progress && std::io::stderr().is_terminal() {
        observers.insert(
            0,
            Box::new(ProgressObserver {
                slot,
                loss_avg: 0.0,
            }),
        );
    }
    observers
}

/// Observers of `mhcl pretrain`: bar, log, metrics file.
pub fn pretrain_observers(config: &PretrainConfig, no_progress: bool) -> Vec<Box<dyn Observer>> {
    let mut observers = console(no_progress);
    observers.push(Box::new(MetricsFile::new(config.output.metrics_path())));
    observers
}

/// Observers of `mhcl lincls`: bar and log (the summary file is the probe's own output).
pub fn lincls_observers(no_progress: bool) -> Vec<Box<dyn Observer>> {
    console(no_progress)
}

/// Installs the Ctrl-C handler once per process: the first Ctrl-C stops `stop` (the run saves
/// a checkpoint), a second one exits with status 130.
pub fn install_interrupt_handler(stop: StopToken) {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        ctrlc::set_handler(move || {
            if stop.is_stopped() {
                std::process::exit(130);
            }
            stop.stop();
            eprintln!("\ninterrupt: finishing the current step and saving a checkpoint");
        })
        .is_ok()
    });
}
