"""The versioned, content-addressed store of adapter versions. Imports no torch."""
