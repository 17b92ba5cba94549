//! DSTU2 and STU3 to R4 mapping for legacy FHIR feeds.
