/* fo_conv.h */
#pragma once
