//! Values every Pressdock crate shares, defined once: [`Secret`] (a password, key or
//! token that never prints) and [`DomainName`] (a host name as the edge routes it).
//!
//! The control plane (`platform`), the drivers (`backends`) and the site agent
//! (`site-agent`) each had their own copy of these; a value parsed by one is now the
//! same type in the others, so it is never parsed again on the way in.

mod domain;
mod secret;

pub use domain::{DomainName, DomainNameError};
pub use secret::Secret;
