//! Where snapshots come from: a routes directory compiled here with the
//! same pure compiler the controller runs ([`files`]), or the controller's
//! push channel ([`controller`]). Either one hands each snapshot to
//! `dispatch::Shared::apply`.

pub(crate) mod controller;
#[cfg(feature = "standalone")]
pub mod files;
