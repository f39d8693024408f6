//! Pending claim → the NFS plugin makes its directory and PV object → the PV is created, and
//! the PV binder binds it.

use std::time::Instant;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::events::{REASON_PROVISIONING_FAILED, REASON_PROVISIONING_SUCCEEDED};
use super::{Context, Error, Result, clone};
use crate::objects::{Claim, Class};
use crate::persistent_volume::pv_name_for;

pub async fn reconcile(
    ctx: &Context,
    key: &ObjectRef<Claim>,
    term: &CancellationToken,
) -> Result<()> {
    let Some(claim) = ctx.claims.get(key) else {
        clone::claim_gone(ctx, key, term).await;
        return Ok(());
    };
    let Some(class) = ctx.class_to_provision(&claim) else {
        return Ok(());
    };
    let pv_name = pv_name_for(&claim.uid().unwrap_or_default());
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        // Already provisioned (possibly by a previous leader); the binder does the rest.
        return Ok(());
    }
    let span = info_span!(
        "provision",
        claim = %format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name),
        pv = %pv_name,
        storage_class = %class.name(),
    );
    let started = Instant::now();
    let outcome = provision(ctx, &claim, &class, &pv_name, term)
        .instrument(span.clone())
        .await;
    match &outcome {
        Ok(Provisioned::Done) => {
            ctx.metrics
                .provisioned(class.name(), "success", Some(started.elapsed()))
        }
        Ok(Provisioned::Copying) => {}
        Err(Error::Stopped) => {}
        Err(e) => {
            ctx.metrics.provisioned(class.name(), e.label(), None);
            span.in_scope(|| tracing::warn!(error = %e, "provisioning failed"));
            let note = format!("failed to provision volume {pv_name}: {e}");
            ctx.events
                .on_claim(&claim, EventType::Warning, REASON_PROVISIONING_FAILED, note)
                .await;
        }
    }
    outcome.map(|_| ())
}

/// How one attempt ended.
enum Provisioned {
    Done,
    /// A clone's copy runs in the background; the claim comes back when it ends.
    Copying,
}

async fn provision(
    ctx: &Context,
    claim: &Claim,
    class: &Class,
    pv_name: &str,
    term: &CancellationToken,
) -> Result<Provisioned> {
    // No `Provisioning` Normal event before the work (the Go provisioner writes one): it
    // doubled the event writes per claim, and a claim's outcome is always reported, as
    // `ProvisioningSucceeded` or as a `ProvisioningFailed` Warning per failed attempt.
    let source = match clone::source::requested(claim) {
        None => None,
        Some(source) => Some(source?),
    };
    let (volume, clone_summary) = match &source {
        None => (
            ctx.exports.provision(claim, class, pv_name, term).await?,
            None,
        ),
        Some(source) => match clone::provision(ctx, claim, class, source, pv_name, term).await? {
            clone::Step::Copying => return Ok(Provisioned::Copying),
            clone::Step::Ready { volume, summary } => (*volume, summary),
        },
    };
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api.create(&PostParams::default(), &volume.pv).await {
        Ok(_) => {}
        // The name is derived from the claim's uid, so this is normally our own PV from an
        // earlier attempt (or leader) whose answer was lost. It counts as provisioned only
        // once the cache shows it as ours: the cache holds no PV of another provisioner, so a
        // foreign PV of that name fails here, every attempt, instead of passing as success.
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
            if ctx.volumes.get(&ObjectRef::new(pv_name)).is_none() {
                return Err(Error::VolumeNameTaken(pv_name.to_string()));
            }
            info!("PV already exists; nothing more to do")
        }
        Err(e) => return Err(e.into()),
    }
    let path = volume.directory.clone();
    volume.created(term).await?;
    info!(directory = %path, "provisioned volume");
    if let Some(source) = &source {
        clone::released(ctx, claim, source).await;
    }
    // Written in the background: the worker moves on to the next claim instead of waiting
    // for a write that only people read.
    let events = ctx.events.clone();
    let claim = claim.clone();
    let note = match clone_summary {
        Some(summary) => format!("Successfully provisioned volume {pv_name}: {summary}"),
        None => format!("Successfully provisioned volume {pv_name}"),
    };
    ctx.tasks.spawn(async move {
        events
            .success_on_claim(&claim, REASON_PROVISIONING_SUCCEEDED, note)
            .await
    });
    Ok(Provisioned::Done)
}
