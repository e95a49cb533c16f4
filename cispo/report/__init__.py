"""Building blocks of the comparison report: statistics, plots, markdown (see cispo.compare)."""
