//! Black-box tests of the FHIR REST API over HTTP on 127.0.0.1:0.

mod common;

mod bad_input;
mod bundles;
mod crud;
mod dashboard;
mod events;
mod formats;
mod history;
mod search;
