"""The embedded single-machine stack started by `signalops up`."""
