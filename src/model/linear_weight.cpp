#include "model/linear_weight.h"

namespace llamaq {

int64_t LinearWeight::nbytes() const {
  if (!nf4) return weight.nbytes();
  return nf4->packed.nbytes() + nf4->absmax.nbytes() + nf4->nested_absmax.nbytes() +
         nf4->nested_map.nbytes();
}

}  // namespace llamaq
