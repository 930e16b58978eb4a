# fo_conv: included by _floatops.pyx
