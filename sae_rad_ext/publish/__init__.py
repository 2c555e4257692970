"""Publishing: SAELens releases, Neuronpedia files, HTML dashboards."""
