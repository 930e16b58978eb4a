# fo_norm: included by _floatops.pyx
