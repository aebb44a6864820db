//! Workloads, overhead comparisons and reports for Augur.
