"""CBX1's endpoint contracts: `base` (the interface, outcomes, key matching), `bulk`, `ingestion`."""
