// Consumer app: links the installed TurboESM, builds a random tiny ESM-2 and embeds one protein.
#include <turboesm/io/tokenizer.h>
#include <turboesm/model/esm2.h>

#include <iostream>

int main() {
  using namespace turboesm;
  auto cfg = model::EsmConfig::preset("tiny");
  auto esm = model::Esm2Model::random(cfg, /*seed=*/1, /*init_std=*/0.02, {});
  auto ids = io::EsmTokenizer::instance().encode("MKTAYIAKQR");  // <cls> + 10 residues + <eos>
  auto tokens = at::tensor(ids, at::kLong).unsqueeze(0);
  auto out = esm->forward(tokens, at::ones_like(tokens), {});
  const auto& h = out.last_hidden_state;
  std::cout << "last_hidden_state " << h.sizes() << "\n";
  const bool ok = h.size(1) == 12 && h.size(2) == cfg.hidden_size && h.isfinite().all().item<bool>();
  std::cout << (ok ? "consumer OK" : "consumer FAILED") << "\n";
  return ok ? 0 : 1;
}
