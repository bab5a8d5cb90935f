"""Export-friendly nn.Modules, one concern each."""
