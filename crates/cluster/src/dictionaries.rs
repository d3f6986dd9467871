//! The dictionary functions on workers: `sae_encode`, `crosscoder_encode` and `pca_project` read the trained
//! dictionaries of the session's cache, so every stage a session sends carries that cache's location (a
//! config option, sent in the request's headers) and the worker registers the functions over it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use datafusion::common::extensions_options;
use datafusion::config::ConfigExtension;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_distributed::DistributedExt;
use diffsql_core::cache::CacheLayout;
use diffsql_sql::dictionary::{self, DictionaryRegistry};

extensions_options! {
    /// The cache of the session that sent a stage.
    pub struct SessionCache {
        /// Its URL, or its directory's absolute path; empty for a session without one.
        pub location: String, default = String::new()
    }
}

impl ConfigExtension for SessionCache {
    const PREFIX: &'static str = "diffsql_cache";
}

/// Makes the stages of a session's queries carry the location of the cache whose dictionaries it reads.
pub fn send_cache_location(mut builder: SessionStateBuilder) -> SessionStateBuilder {
    let location = builder
        .config()
        .as_ref()
        .and_then(|c| c.get_extension::<DictionaryRegistry>())
        .map(|registry| registry.cache_location())
        .unwrap_or_default();
    builder.with_distributed_option_extension(SessionCache { location })
}

/// On a worker: registers the dictionary functions over the cache that `ctx`'s stage came from, if it
/// names one.
pub fn register_for_stage(ctx: &SessionContext) {
    let location = ctx
        .state()
        .config()
        .options()
        .extensions
        .get::<SessionCache>()
        .map(|c| c.location.clone())
        .unwrap_or_default();
    if !location.is_empty() {
        dictionary::register(ctx, registry_at(&location));
    }
}

/// The dictionaries of every cache this worker has run stages of, by location: kept, so that a dictionary is
/// loaded once (and again only when it is retrained), not for every stage.
fn registry_at(location: &str) -> Arc<DictionaryRegistry> {
    static REGISTRIES: OnceLock<Mutex<HashMap<String, Arc<DictionaryRegistry>>>> = OnceLock::new();
    let mut registries = REGISTRIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let registry = registries
        .entry(location.to_string())
        .or_insert_with(|| Arc::new(DictionaryRegistry::new(CacheLayout::new(location))));
    Arc::clone(registry)
}
