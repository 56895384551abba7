from cnn import *
from cv import *
tr, hold = list(folds())[1]
model, params, _ = fit(features_from_glyphs(g[tr]), np.tile(d[tr], 5), DEFAULT, 0)
f = video_feats(vids[hold]); n = len(hold)
logits = np.asarray(model.apply(params, jnp.asarray(f.reshape(-1, 8, 8, 1)))).reshape(n, -1, 10)
pred = logits.argmax(-1)[:, 0]
for i in np.flatnonzero(pred != d[hold]):
    print(hold[i], "true", d[hold][i], "pred", pred[i])
    print((g[hold[i]] * 9).round().astype(int))
