//! `Baseline`: whether validation passes at the committed head, before any
//! change. A base that fails is remembered with what its failure shows
//! (failing tests, the compiler's error line), which `Prepare` adds to the
//! signals while that base is the head.

use ractor::RpcReplyPort;
use tracing::Instrument;

use super::{Context, KIND, ModifierState, fitness, run_confined};
use crate::domain::Signals;
use crate::messages::ActorError;
use crate::process::CommandSpec;
use crate::sandbox::Reach;

/// Why validation fails at the head, and what the failure shows.
type Failing = Option<(String, Signals)>;

impl ModifierState {
    pub(super) fn baseline(&mut self, reply: RpcReplyPort<Result<Failing, ActorError>>) {
        let ctx = self.ctx.clone();
        let head = self.snapshot.head.clone();
        let failing_base = self.failing_base.clone();
        let span = tracing::info_span!("modifier.baseline", actor = KIND.name());
        self.work.spawn(
            async move {
                let result = baseline(&ctx).await.map_err(ActorError::Workspace);
                if let Ok(found) = &result {
                    *failing_base.lock().unwrap_or_else(|p| p.into_inner()) =
                        found.as_ref().map(|(_, signals)| (head, signals.clone()));
                }
                let _ = reply.send(result);
            }
            .instrument(span),
        );
    }
}

/// Validation on the head: why it fails, if it does, and what the failure
/// shows as signals (the failing tests; the compiler's error line when the
/// tests do not build).
pub(super) async fn baseline(ctx: &Context) -> Result<Failing, String> {
    if let Some(checks) = &ctx.checks {
        let failed = checks.validate(&ctx.workspace.path).await.err();
        return Ok(failed.map(|why| {
            (
                format!("validation fails at the base: {why}"),
                Signals::default(),
            )
        }));
    }
    let spec = CommandSpec::shell(
        &ctx.config.validation_command,
        &ctx.workspace.path,
        ctx.config.validation_timeout,
    );
    let finished = run_confined(ctx, spec, Reach::Baseline).await?;
    if finished.success() {
        return Ok(None);
    }
    let first = finished.first_error_line();
    let output = format!("{}\n{}", finished.stdout, finished.stderr);
    let signals = Signals {
        failing_tests: fitness::failing_tests(&output),
        error: first.starts_with("error").then(|| first.clone()),
        ..Signals::default()
    };
    Ok(Some((
        format!(
            "validation `{}` fails at the base, before any change: {first}",
            ctx.config.validation_command
        ),
        signals,
    )))
}
