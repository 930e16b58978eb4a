/* fo_norm: see src_cython/_floatops.pyx */
