//! [`NameLocks`]: one async lock per name inside the plugin process.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

type Slot<T> = Arc<tokio::sync::Mutex<T>>;

/// One lock per name (a record name, a zone), each guarding a value `T`
/// (`()` when only mutual exclusion is needed), created on first use and
/// forgotten once nobody holds or awaits it and its value is back to
/// `T::default()`.
///
/// Use it for read-modify-write APIs (fetch a record set, add a value, write
/// it back): two `present` calls at one name in this process then take
/// turns instead of losing a value. Calls from *other* certsmith processes
/// are serialized by the host itself (it takes a lock per solver and name in
/// its state directory around each `present` and `cleanup`), so a plugin
/// needs no file locks of its own.
///
/// ```
/// use certsmith_plugin_api::sdk::NameLocks;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let locks: NameLocks<Vec<String>> = NameLocks::new();
/// {
///     let mut values = locks.lock("_acme-challenge.example.com").await;
///     values.push("v1".to_owned()); // held across the provider's calls
/// }
/// assert_eq!(locks.lock("_acme-challenge.example.com").await.len(), 1);
/// # });
/// ```
pub struct NameLocks<T = ()> {
    slots: Arc<Mutex<HashMap<String, Slot<T>>>>,
}

impl<T> fmt::Debug for NameLocks<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameLocks")
            .field("names", &self.map().len())
            .finish()
    }
}

impl<T: Default + PartialEq + Send + 'static> Default for NameLocks<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for NameLocks<T> {
    /// Another handle to the same locks.
    fn clone(&self) -> Self {
        NameLocks {
            slots: self.slots.clone(),
        }
    }
}

impl<T> NameLocks<T> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot<T>>> {
        // Insert and remove are single operations: a poisoned map is intact.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Default + PartialEq + Send + 'static> NameLocks<T> {
    /// No locks yet.
    pub fn new() -> Self {
        NameLocks {
            slots: Arc::default(),
        }
    }

    /// Waits for the lock of `name` (compared exactly: normalize case and
    /// trailing dots first) and returns its value, held until the guard is
    /// dropped.
    pub async fn lock(&self, name: &str) -> NameGuard<T> {
        let slot = self.map().entry(name.to_owned()).or_default().clone();
        let guard = slot.lock_owned().await;
        NameGuard {
            guard: Some(guard),
            name: name.to_owned(),
            slots: self.slots.clone(),
        }
    }

    /// How many names have a lock right now (held, awaited, or holding a
    /// value other than the default).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no name has a lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The held lock of one name; dereferences to its value.
pub struct NameGuard<T: Default + PartialEq + Send + 'static> {
    guard: Option<tokio::sync::OwnedMutexGuard<T>>,
    name: String,
    slots: Arc<Mutex<HashMap<String, Slot<T>>>>,
}

impl<T: Default + PartialEq + Send + 'static> fmt::Debug for NameGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameGuard")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Default + PartialEq + Send + 'static> NameGuard<T> {
    /// The name this guard locks.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Default + PartialEq + Send + 'static> Deref for NameGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.guard {
            Some(g) => g,
            // `guard` is only taken in Drop.
            None => unreachable!("a NameGuard is used after drop"),
        }
    }
}

impl<T: Default + PartialEq + Send + 'static> DerefMut for NameGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.guard {
            Some(g) => g,
            None => unreachable!("a NameGuard is used after drop"),
        }
    }
}

impl<T: Default + PartialEq + Send + 'static> Drop for NameGuard<T> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Slots are handed out only under the map's mutex, which we hold:
        // two references (the map's and our guard's) mean nobody else holds
        // or awaits this one.
        let idle = map
            .get(&self.name)
            .is_some_and(|slot| Arc::strong_count(slot) == 2 && *guard == T::default());
        drop(guard);
        if idle {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_holder_per_name_and_idle_names_are_forgotten() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let locks: NameLocks<u32> = NameLocks::new();
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let locks = locks.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = locks.lock("a").await;
                    let seen = *n;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    *n = seen + 1; // lost updates if two held it at once
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(*locks.lock("a").await, 8);
            assert_eq!(locks.len(), 1, "a non-default value is kept");
            *locks.lock("a").await = 0;
            let other = locks.lock("b").await;
            assert_eq!(locks.len(), 1, "'a' went back to default and was forgotten");
            drop(other);
            assert!(locks.is_empty());
        });
    }
}
