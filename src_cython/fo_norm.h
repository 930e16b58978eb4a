/* fo_norm.h */
#pragma once
