// Voice presets are .npz files: a zip of .npy arrays. Enough of both formats to read them (stored or deflated
// entries; little-endian int64/float32/float16 arrays in C order). Deflate goes through DecompressionStream, which
// node and browsers both have.

function npy(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error('Fortran-order .npy is not supported');
  const body = new Uint8Array(bytes.subarray(start + headerLen)); // a copy: typed views need an aligned offset
  const types = { '<i8': BigInt64Array, '<f4': Float32Array, '<f2': Uint16Array, '<i4': Int32Array };
  if (!types[descr]) throw new Error(`unsupported .npy dtype ${descr}`);
  return { dtype: descr, shape, data: new types[descr](body.buffer, body.byteOffset, body.byteLength / types[descr].BYTES_PER_ELEMENT) };
}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** name (without .npy) -> {dtype, shape, data}. `bytes`: the whole .npz file (Uint8Array). */
export async function readNpz(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = bytes.length - 22;
  while (eocd >= 0 && view.getUint32(eocd, true) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error('not a zip file');
  const count = view.getUint16(eocd + 10, true);
  let p = view.getUint32(eocd + 16, true);
  const arrays = {};
  for (let k = 0; k < count; k++) {
    const method = view.getUint16(p + 10, true);
    const size = view.getUint32(p + 20, true);
    const nameLen = view.getUint16(p + 28, true), extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true), local = view.getUint32(p + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const raw = bytes.subarray(dataStart, dataStart + size);
    arrays[name.replace(/\.npy$/, '')] = npy(method === 0 ? raw : await inflateRaw(raw));
    p += 46 + nameLen + extraLen + commentLen;
  }
  return arrays;
}
