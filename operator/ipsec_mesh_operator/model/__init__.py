"""Pure data and rules: peerings, their status, label selectors, Services, the CRD schema, settings. Imports nothing else of the operator."""
