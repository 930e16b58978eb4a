/* fo_conv: see src_cython/_floatops.pyx */
