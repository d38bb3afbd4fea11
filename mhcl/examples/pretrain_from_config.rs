//! Pretraining from Rust, without the command line: a [`PretrainConfig`] built in code, the
//! [`Pretrainer`] that runs it, and an observer of our own.
//!
//! ```text
//! cargo run --release --example pretrain_from_config
//! ```
//!
//! It generates the small demo dataset into a temporary folder, pretrains a narrow ResNet-18
//! with MHCL for three epochs (about a minute on two CPU cores), prints one line per epoch from
//! the custom observer and saves its config as TOML next to the checkpoint, the file that
//! `mhcl pretrain --config run.toml` reads.

use mhcl::config::{Augmentation, PretrainConfig, Schedule};
use mhcl::metrics::EpochMetrics;
use mhcl::observe::{Observer, StepReport};
use mhcl::{Pretrainer, Result};
use ssl_models::Arch;

/// Counts steps and prints each epoch's loss and accuracy.
#[derive(Default)]
struct EpochPrinter {
    steps: usize,
}

impl Observer for EpochPrinter {
    fn step(&mut self, _step: &StepReport) -> Result<()> {
        self.steps += 1;
        Ok(())
    }

    fn pretrain_epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        println!(
            "epoch {}: loss {:.4}, acc@1 {:.1} % after {} steps ({:.0} img/s)",
            m.epoch, m.loss, m.acc1, self.steps, m.images_per_s
        );
        Ok(())
    }

    fn checkpoint_saved(&mut self, path: &std::path::Path) -> Result<()> {
        println!("saved {}", path.display());
        Ok(())
    }
}

fn main() -> Result<()> {
    let root = std::env::temp_dir().join(format!("mhcl-from-config-{}", std::process::id()));
    let data = root.join("scenes");
    mhcl::synthetic::SyntheticConfig::new()
        .with_classes(4)
        .with_per_class(32, 8)
        .with_size(40)
        .generate(&data)?;

    let mut config = PretrainConfig {
        seed: Some(0),
        ..PretrainConfig::default()
    };
    config.data.root = data;
    config.data.image_size = 32;
    config.data.workers = 2;
    config.augmentation = Augmentation::MocoV1;
    config.model = config
        .model
        .clone()
        .with_mhcl(true)
        .with_mlp(true)
        .with_dim(32)
        .with_queue_len(256)
        .with_temperature(0.2)
        .with_beta(1.0, 0.1);
    config.model.arch = Arch::ResNet18;
    config.model.width = 8;
    config.training.epochs = 3;
    config.training.batch_size = 32;
    config.training.schedule = Schedule::Cosine;
    config.output.dir = root.join("run");
    config.output.print_freq = 0;

    std::fs::create_dir_all(&config.output.dir)
        .map_err(|e| mhcl::MhclError::io(&config.output.dir, e))?;
    let toml = toml::to_string_pretty(&config).expect("a config has a TOML form");
    let toml_path = config.output.dir.join("run.toml");
    std::fs::write(&toml_path, toml).map_err(|e| mhcl::MhclError::io(&toml_path, e))?;
    println!("config: {}", toml_path.display());

    let mut observer = EpochPrinter::default();
    let outcome = Pretrainer::new(config)?.run(&mut observer)?;
    println!(
        "done: {} epochs, seed {}, last checkpoint {:?}",
        outcome.metrics.len(),
        outcome.seed,
        outcome.last_checkpoint
    );
    Ok(())
}
