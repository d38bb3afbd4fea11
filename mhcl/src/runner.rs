//! What pretraining and the linear probe share: a validated config, its launch plan and a stop
//! token ([`Runner`]). [`crate::train::Pretrainer`] and [`crate::lincls::LinearProbe`] are
//! `Runner`s of [`PretrainConfig`] and [`LinclsConfig`]; their `run` methods are in those
//! modules.

use ssl_distributed::WorkerLayout;

use crate::config::{DistConfig, LinclsConfig, PretrainConfig};
use crate::dist::{Launch, RankCtx};
use crate::error::Result;
use crate::observe::{Observer, StopToken};

/// A config a [`Runner`] can launch.
pub trait RunConfig {
    /// Every check that needs no file.
    fn check(&self) -> Result<()>;
    /// The data-parallel settings.
    fn dist(&self) -> &DistConfig;
    /// `(images per step over the node, loader threads of the node)`.
    fn node_batch_and_workers(&self) -> (usize, usize);
    /// Checks that need the per-rank layout of a data-parallel launch.
    fn check_layout(&self, _layout: &WorkerLayout) -> Result<()> {
        Ok(())
    }
}

/// The methods both configs answer the same way (same field names).
macro_rules! run_config_fields {
    () => {
        fn check(&self) -> Result<()> {
            Ok(self.validate()?)
        }
        fn dist(&self) -> &DistConfig {
            &self.dist
        }
        fn node_batch_and_workers(&self) -> (usize, usize) {
            (self.training.batch_size, self.data.workers)
        }
    };
}

impl RunConfig for PretrainConfig {
    run_config_fields!();
    /// The queue takes the keys of every rank: K must be a multiple of the global batch.
    fn check_layout(&self, layout: &WorkerLayout) -> Result<()> {
        if layout.world_size > 1 {
            self.model
                .check_batch(layout.batch_size * layout.world_size, layout.batch_size)
                .map_err(|e| e.within("model"))?;
        }
        Ok(())
    }
}

impl RunConfig for LinclsConfig {
    run_config_fields!();
}

/// A checked config, how it launches and what stops it.
#[derive(Debug)]
pub struct Runner<C> {
    pub(crate) config: C,
    pub(crate) launch: Launch,
    pub(crate) stop: StopToken,
}

impl<C: RunConfig> Runner<C> {
    /// Checks `config` (every check that needs no file) and decides how the run launches
    /// ([`crate::dist::plan`]): one process, ranks as threads, worker processes, or a rank of
    /// a process group.
    pub fn new(config: C) -> Result<Self> {
        config.check()?;
        let (batch, workers) = config.node_batch_and_workers();
        let launch = Launch::for_run(config.dist(), batch, workers)?;
        config.check_layout(&launch.layout(batch, workers))?;
        Ok(Self {
            config,
            launch,
            stop: StopToken::new(),
        })
    }

    /// Uses `stop` (e.g. one a Ctrl-C handler stops) instead of a fresh token.
    pub fn with_stop_token(mut self, stop: StopToken) -> Self {
        self.stop = stop;
        self
    }

    /// The token that stops this run.
    pub fn stop_token(&self) -> &StopToken {
        &self.stop
    }

    /// The configuration.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// How the run launches. [`Launch::Spawn`] (worker processes of the `mhcl` command) is the
    /// command's to start; `run` refuses it.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// Runs `rank` as every rank this process hosts and returns rank 0's result; rank 0 gets
    /// `observer`, the others one that observes nothing. `command` names the subcommand in
    /// the error for a [`Launch::Spawn`].
    pub(crate) fn run_ranks<R: Send>(
        &self,
        command: &str,
        observer: &mut dyn Observer,
        rank: impl Fn(&RankCtx, &mut dyn Observer) -> Result<R> + Sync,
    ) -> Result<R> {
        let (batch, workers) = self.config.node_batch_and_workers();
        self.launch
            .run_observed(batch, workers, command, observer, rank)
    }
}
