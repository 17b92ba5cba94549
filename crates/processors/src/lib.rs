//! Stream-processing runtime on the event log: consumer groups, per-key state, retries, dead letters; the built-in processors.
