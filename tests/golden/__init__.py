"""The golden log: a log written by a released version, which every later version must still replay, rebuild
and audit (see README.md beside this file)."""
