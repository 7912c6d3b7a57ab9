//! `shield aop enroll`: zone-level Authenticated Origin Pulls with a CA of
//! the host's own, in the one order that never locks Cloudflare out:
//! shield must accept the new CA before Cloudflare starts presenting a
//! certificate it issued.
//!
//! 1. [`pki`]: a CA and a client certificate it signs, written to files;
//! 2. [`config_edit`] adds the CA to the site's `client_ca`, [`reload`]
//!    reloads the daemon and proves with a handshake that it accepts the
//!    new client certificate;
//! 3. [`api`] uploads the certificate and key to the zone and waits until
//!    Cloudflare reports it `active`;
//! 4. [`api`] turns zone-level AOP on.

pub mod api;
pub mod config_edit;
mod enroll;
mod error;
pub mod pki;
pub mod reload;
pub mod token;

pub use enroll::{enroll, EnrollOptions, Output};
pub use error::AopError;
