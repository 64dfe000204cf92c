"""Cross-validated fine-tuning of Inception V3's mixed9 + mixed10 in PyTorch on
the cut activations a retrain run cached: a fast replica of `retrain
--fine-tune` for comparing recipes (see README.md)."""
import argparse, base64, glob, hashlib, json, math, os, re, struct, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_WEIGHTS = os.path.expanduser('~/.cache/retrain/inception_v3-nsfwjs-4.4.0-f32.safetensors')


def read_entry(path):
    """One cache entry's values: magic, u32 count, values (f16 or f32), sha256."""
    b = open(path, 'rb').read()
    magic, n = b[:8], struct.unpack('<I', b[8:12])[0]
    if magic == b'RTACTF16':
        return np.frombuffer(b[12:12 + 2 * n], dtype='<f2').astype(np.float32)
    assert magic == b'RTBNECK1', f'{path}: not a retrain cache entry'
    return np.frombuffer(b[12:12 + 4 * n], dtype='<f4').copy()


def dataset(cache):
    """Every image with a cached mixed8 entry: (cuts, bottlenecks, labels, (class, file name)s)."""
    cuts, bottlenecks, labels, names = [], [], [], []
    classes = sorted(d for d in os.listdir(cache) if os.path.isdir(os.path.join(cache, d)))
    for label, cls in enumerate(classes):
        for f in sorted(glob.glob(os.path.join(cache, cls, '*.mixed8.f16'))):
            image = os.path.basename(f).rsplit('.', 3)[0]
            bottleneck = glob.glob(os.path.join(cache, cls, glob.escape(image) + '.*.bottleneck'))
            cuts.append(read_entry(f))
            bottlenecks.append(read_entry(bottleneck[0]))
            labels.append(label)
            names.append((cls, image))
    return np.stack(cuts), np.stack(bottlenecks), np.array(labels), names


def retrain_set(image_dir, cls, image, validation=10.0, testing=10.0):
    """The set retrain (retrain.py's hash rule) puts IMAGE_DIR/cls/image in:
    0 validation, 1 training, 2 testing. IMAGE_DIR as passed to retrain."""
    path = os.path.join(image_dir, cls, image)
    digest = hashlib.sha1(path.split('_nohash_')[0].encode()).digest()
    share = int.from_bytes(digest[16:20], 'big') % (1 << 27) * (100 / ((1 << 27) - 1))
    return 0 if share < validation else 2 if share < validation + testing else 1


def safetensors(path, prefixes):
    """The f32 tensors of a safetensors file whose names start with one of `prefixes`."""
    f = open(path, 'rb')
    n = struct.unpack('<Q', f.read(8))[0]
    header = json.loads(f.read(n))
    header.pop('__metadata__', None)
    out = {}
    for name, t in header.items():
        if name.startswith(prefixes):
            start, end = t['data_offsets']
            f.seek(8 + n + start)
            out[name] = np.frombuffer(f.read(end - start), dtype='<f4').reshape(t['shape']).copy()
    return out


def top_weights(path):
    """mixed9's and mixed10's tensors from a converted (safetensors) weight file."""
    return safetensors(path, ('mixed9/', 'mixed10/'))


class Conv(nn.Module):
    """A conv with its batch norm folded in, then ReLU (HWIO weights from the file).
    With a `scale` (1/σ of the batch norm), the trained weight is the kernel
    before its frozen batch norm, as Keras trains it: conv(x, weight·scale)."""
    def __init__(self, w, b, scale=None):
        super().__init__()
        w = torch.tensor(w).permute(3, 2, 0, 1).contiguous()
        if scale is None:
            self.weight, self.scale = nn.Parameter(w), None
        else:
            self.scale = torch.tensor(scale)[:, None, None, None]
            self.weight = nn.Parameter(w / self.scale)
        self.bias = nn.Parameter(torch.tensor(b))

    def forward(self, x):
        w = self.weight if self.scale is None else self.weight * self.scale
        return F.relu(F.conv2d(x, w, self.bias, padding='same'))


class InceptionE(nn.Module):
    """mixed9 / mixed10, branches concatenated in Keras's order."""
    def __init__(self, W, name, scales):
        super().__init__()
        c = lambda n: Conv(W[f'{name}/{n}.weight'], W[f'{name}/{n}.bias'], scales.get(f'{name}/{n}'))
        self.b1 = c('branch1x1')
        self.b3_1, self.b3_2a, self.b3_2b = c('branch3x3_1'), c('branch3x3_2a'), c('branch3x3_2b')
        self.bd_1, self.bd_2 = c('branch3x3dbl_1'), c('branch3x3dbl_2')
        self.bd_3a, self.bd_3b = c('branch3x3dbl_3a'), c('branch3x3dbl_3b')
        self.pool = c('branch_pool')

    def forward(self, x):
        b3, bd = self.b3_1(x), self.bd_2(self.bd_1(x))
        pooled = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat([self.b1(x), self.b3_2a(b3), self.b3_2b(b3),
                          self.bd_3a(bd), self.bd_3b(bd), self.pool(pooled)], 1)


class Top(nn.Module):
    """mixed8's output (NHWC, flattened) -> mixed10 -> global average pool."""
    def __init__(self, W, scales={}):
        super().__init__()
        self.mixed9, self.mixed10 = InceptionE(W, 'mixed9', scales), InceptionE(W, 'mixed10', scales)

    def forward(self, cut):
        side = int(round(math.sqrt(cut.shape[1] / 1280)))
        x = cut.view(-1, side, side, 1280).permute(0, 3, 1, 2)
        return self.mixed10(self.mixed9(x)).mean((2, 3))


def standardisation(f):
    """Per-feature mean and deviation, as retrain standardises the head's input."""
    return f.mean(0), f.std(0) + 1e-6


def frozen_head(f, y, l2, standardised=True):
    """Logistic regression with penalty l2·‖W‖² (LBFGS), on standardised
    features (or on raw ones: mean 0, deviation 1)."""
    mu, sd = standardisation(f) if standardised else (torch.zeros(f.shape[1]), torch.ones(f.shape[1]))
    z = (f - mu) / sd
    w = torch.zeros(f.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return mu, sd, w.detach(), b.detach()


TOP_CONVS = ['branch1x1', 'branch3x3_1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_1',
             'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool']


def keras_scales(folder, epsilon=1e-3):
    """mixed9's and mixed10's 1/σ per output channel (σ² their frozen batch
    norms' moving variance; Keras's Inception V3 has no γ) from nsfwjs's TF.js
    model folder: convs 77-94 in Keras's creation order."""
    bundle = open(os.path.join(folder, 'model.min.js')).read()
    assert bundle.count('paths:[') == 1, f'{folder}: expected one weight group'
    entry = re.compile(r'\{name:"([^"]+)",shape:\[([\d,]*)\],dtype:"float32"'
                       r'(?:,quantization:\{min:([^,]+),scale:([^,]+),dtype:"(uint8|uint16)"\})?\}')
    paths = re.search(r'paths:\[([^\]]*)\]', bundle).group(1).replace('"', '').split(',')
    data = b''.join(base64.b64decode(open(os.path.join(folder, f + '.min.js')).read()
                                     .split('exports="', 1)[1].split('"', 1)[0]) for f in paths)
    names = {f'batch_normalization_{77 + i}/moving_variance': f'{block}/{conv}'
             for i, (block, conv) in enumerate((b, c) for b in ['mixed9', 'mixed10'] for c in TOP_CONVS)}
    scales, at = {}, 0
    for name, shape, low, step, dtype in entry.findall(bundle):
        count = int(np.prod([int(d) for d in shape.split(',') if d]))
        width = {'': 4, 'uint8': 1, 'uint16': 2}[dtype]
        raw = data[at:at + count * width]
        at += count * width
        if name in names:
            values = (np.frombuffer(raw, '<f4') if not dtype else
                      np.frombuffer(raw, '<u1' if dtype == 'uint8' else '<u2') * float(step) + float(low))
            scales[names[name]] = (1 / np.sqrt(values.astype(np.float64) + epsilon)).astype(np.float32)
    manifest = bundle[bundle.index('weightsManifest'):]
    assert len(entry.findall(bundle)) == manifest.count('{name:"') and at == len(data), \
        f'{folder}: the weight manifest was not read whole'
    assert len(scales) == len(names), f'{folder}: not all of mixed9/mixed10 batch norms found'
    return scales


def accuracy(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--cache', required=True, help="retrain's --bottleneck-dir after a --fine-tune run")
    p.add_argument('--weights', default=DEFAULT_WEIGHTS)
    p.add_argument('--opt', default='adam', choices=['adam', 'sgd'])
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--dropout', type=float, default=0.5)
    p.add_argument('--wd', type=float, default=1e-4)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--head', default='standardised', choices=['standardised', 'folded', 'fresh', 'raw'],
                   help='raw: a logistic head fitted on the raw features (as a Keras Dense layer is)')
    p.add_argument('--head-from', metavar='MODEL',
                   help="start from the head of a classifier file retrain wrote without fine-tuned "
                        "tensors (the sweep's head), standardised as retrain trains it")
    p.add_argument('--schedule', default='cosine', choices=['cosine', 'constant'],
                   help='cosine: warm-up over the first tenth, then cosine decay (retrain); constant (Keras)')
    p.add_argument('--keras', metavar='TFJS_FOLDER',
                   help="train the kernels before their frozen batch norm, biases frozen, as Keras does "
                        "(the norms' variances read from nsfwjs@4.4.0's dist/models/inception_v3)")
    p.add_argument('--only-folds', type=int, nargs='+', metavar='K', help='run only these folds (0-based)')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--retrain-split', metavar='IMAGE_DIR',
                   help="instead of folds, retrain's one split of the images under IMAGE_DIR "
                        "(the --image-dir of the run that filled the cache, spelled as passed to it; "
                        "10%% validation, the 10%% test images left out)")
    p.add_argument('--frozen-only', action='store_true')
    p.add_argument('--flip', type=float, default=0.0,
                   help='share of training images whose cut activations are mirrored left-right')
    p.add_argument('--head-lr', type=float, default=1.0, help="the head's learning rate over the blocks'")
    p.add_argument('--smooth', type=float, default=0.0, help='label smoothing')
    p.add_argument('--dropout-centred', action='store_true',
                   help="drop features to their mean (dropout on the standardised features), not to 0")
    p.add_argument('--seed', type=int, default=0,
                   help="seed of the training images' order and of dropout (the folds stay)")
    p.add_argument('--train-share', type=float, default=1.0,
                   help="share of each fold's training images used (a learning curve)")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    cuts, bottlenecks, labels, names = dataset(a.cache)
    W = top_weights(a.weights)
    scales = keras_scales(a.keras) if a.keras else {}
    X, Y = torch.tensor(cuts), torch.tensor(labels)
    with torch.no_grad():
        check = Top(W)(X[:16]).numpy()
    error = np.linalg.norm(check - bottlenecks[:16]) / np.linalg.norm(bottlenecks[:16])
    print(f'{len(labels)} images; replica vs cached bottlenecks: relative L2 {error:.1e}')
    assert error < 1e-3, 'the replica does not reproduce the cached bottlenecks'
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(np.where(labels == c)[0]) for c in np.unique(labels)])
    fold_of = np.empty(len(labels), int)
    fold_of[order] = np.arange(len(labels)) % a.folds
    if a.retrain_split:
        fold_of = np.array([retrain_set(a.retrain_split, *n) for n in names])
        print(f'retrain\'s split: {np.sum(fold_of == 1)} training, {np.sum(fold_of == 0)} validation '
              f'({np.sum(fold_of == 2)} test images left out)')
        a.only_folds = [0]
    frozen, curves, started = [], [], time.time()
    for k in a.only_folds or range(a.folds):
        tr = np.where(fold_of == 1 if a.retrain_split else fold_of != k)[0]
        va = np.where(fold_of == k)[0]
        if a.train_share < 1.0:
            keep = np.random.default_rng(100 + k).permutation(len(tr))[:round(a.train_share * len(tr))]
            tr = np.sort(tr[keep])
        net = Top(W, scales)
        if scales:
            for n, q in net.named_parameters():
                q.requires_grad_(n.endswith('weight'))
        with torch.no_grad():
            ftr, fva = net(X[tr]), net(X[va])
        if a.head_from:
            assert not safetensors(a.head_from, ('base/',)), \
                f'{a.head_from}: a fine-tuned classifier; its head belongs to its own blocks'
            saved = safetensors(a.head_from, ('final_',))
            raw_w, raw_b = torch.tensor(saved['final_weights']), torch.tensor(saved['final_biases'])
            mu, sd = standardisation(ftr)
            w, b = raw_w * sd[:, None], raw_b + mu @ raw_w
        else:
            inner = np.arange(len(tr)) % 4 == 0
            scores, std = [], a.head != 'raw'
            for l2 in [1e-4, 1e-3, 1e-2, 3e-2, 1e-1]:
                mu, sd, w, b = frozen_head(ftr[~inner], Y[tr][~inner], l2, std)
                scores.append((accuracy(((ftr[inner] - mu) / sd) @ w + b, Y[tr][inner]), l2))
            mu, sd, w, b = frozen_head(ftr, Y[tr], max(scores)[1], std)
        frozen.append(accuracy(((fva - mu) / sd) @ w + b, Y[va]))
        if a.frozen_only:
            continue
        if a.head == 'folded':
            hw, hb = nn.Parameter(w / sd[:, None]), nn.Parameter(b - (mu / sd) @ w)
            head = lambda f: f @ hw + hb
        else:
            start = (w, b) if a.head in ('standardised', 'raw') else (torch.zeros_like(w), torch.zeros_like(b))
            hw, hb = nn.Parameter(start[0].clone()), nn.Parameter(start[1].clone())
            head = lambda f: ((f - mu) / sd) @ hw + hb
        named = list(net.named_parameters())
        groups = [{'params': [q for n, q in named if n.endswith('weight')], 'weight_decay': a.wd, 'scale': 1.0},
                  {'params': [q for n, q in named if n.endswith('bias') and q.requires_grad],
                   'weight_decay': 0.0, 'scale': 1.0},
                  {'params': [hw], 'weight_decay': a.wd, 'scale': a.head_lr},
                  {'params': [hb], 'weight_decay': 0.0, 'scale': a.head_lr}]
        opt = (torch.optim.AdamW(groups, lr=a.lr) if a.opt == 'adam'
               else torch.optim.SGD(groups, lr=a.lr, momentum=0.9))
        steps = len(tr) // a.batch
        total, warm, step = steps * a.epochs, max(steps * a.epochs // 10, 1), 0
        g = torch.Generator().manual_seed(k + 1000 * a.seed)
        torch.manual_seed(k + 1000 * a.seed)
        curve = []
        for _ in range(a.epochs):
            perm = tr[torch.randperm(len(tr), generator=g).numpy()]
            for s in range(steps):
                rows = perm[s * a.batch:(s + 1) * a.batch]
                lr = (a.lr if a.schedule == 'constant' else a.lr * (step + 1) / warm if step < warm else
                      a.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1))))
                for group in opt.param_groups:
                    group['lr'] = lr * group['scale']
                x = X[rows]
                if a.flip > 0:
                    side = int(round(math.sqrt(x.shape[1] / 1280)))
                    v = x.view(-1, side, side, 1280)
                    mirrored = torch.rand(len(rows), generator=g) < a.flip
                    x = torch.where(mirrored[:, None, None, None], v.flip(2), v).reshape(len(rows), -1)
                f = net(x)
                f = (mu + F.dropout(f - mu, a.dropout, True) if a.dropout_centred
                     else F.dropout(f, a.dropout, True))
                loss = F.cross_entropy(head(f), Y[rows], label_smoothing=a.smooth)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            with torch.no_grad():
                curve.append(accuracy(head(net(X[va])), Y[va]))
        curves.append(curve)
        print(f'fold {k}: frozen {frozen[-1]:.3f}, epochs ' + ' '.join(f'{v:.3f}' for v in curve), flush=True)
    line = f"{' '.join(sys.argv[1:])}: frozen {np.mean(frozen):.3f}"
    if curves:
        line += ' | epochs ' + ' '.join(f'{v:.3f}' for v in np.mean(curves, 0))
    line += f' | {time.time() - started:.0f} s'
    print(line)
    with open('results.txt', 'a') as out:
        out.write(line + '\n')


if __name__ == '__main__':
    main()
