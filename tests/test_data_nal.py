"""NAL headers: which packets hold frames no other frame refers to (tpn.data.nal)."""
from tpn.data.nal import h264_nonref, hevc_nonref, nonref_test


def avcc(*nals: bytes, size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def test_h264_nal_ref_idc_of_the_slices_decides():
    sei, aud = bytes([0x06, 0x05, 0x01]), bytes([0x09, 0xF0])
    nonref_slice, ref_slice, idr = bytes([0x01, 0x9A]), bytes([0x41, 0x9A]), bytes([0x65, 0x88])
    assert h264_nonref(avcc(nonref_slice), 4)
    assert h264_nonref(avcc(aud, sei, nonref_slice), 4)  # SEI/AUD before the slice do not count
    assert h264_nonref(avcc(nonref_slice, nonref_slice, size=2), 2)
    assert not h264_nonref(avcc(ref_slice), 4)
    assert not h264_nonref(avcc(idr), 4)
    assert not h264_nonref(avcc(nonref_slice, ref_slice), 4)
    assert not h264_nonref(avcc(sei), 4)  # no slice at all
    assert not h264_nonref(avcc(bytes([0x14, 0x00]), nonref_slice), 4)  # an MVC extension slice
    assert not h264_nonref(avcc(nonref_slice)[:-1], 4)  # truncated
    assert not h264_nonref(b"\x00\x00\x00\x01\x01\x9a", 4)  # Annex B start code read as a length


def hevc_nal(kind: int, tid: int = 0) -> bytes:
    return bytes([kind << 1, tid + 1, 0xAF])


def test_hevc_sublayer_nonref_only_at_the_top_temporal_layer():
    trail_n, trail_r, rasl_n, cra = hevc_nal(0), hevc_nal(1), hevc_nal(8), hevc_nal(21)
    prefix_sei = hevc_nal(39)
    assert hevc_nonref(avcc(trail_n), 4, 0)
    assert hevc_nonref(avcc(prefix_sei, rasl_n), 4, 0)
    assert hevc_nonref(avcc(hevc_nal(0, tid=1)), 4, 1)
    assert not hevc_nonref(avcc(trail_n), 4, 1)  # a higher sub-layer may refer to it
    assert not hevc_nonref(avcc(trail_r), 4, 0)
    assert not hevc_nonref(avcc(cra), 4, 0)
    assert not hevc_nonref(avcc(trail_n, trail_r), 4, 0)
    assert not hevc_nonref(avcc(hevc_nal(33), trail_n), 4, 0)  # an in-band SPS
    assert not hevc_nonref(avcc(prefix_sei), 4, 0)


def test_streams_that_cannot_be_judged_drop_nothing():
    avcc_config = bytes([1, 0x64, 0, 0x1E, 0xFF, 0xE0, 0])
    assert nonref_test("h264", avcc_config) is not None
    assert nonref_test("h264", avcc_config[:4] + bytes([0xFE]) + avcc_config[5:]) is None  # 3-byte lengths
    assert nonref_test("h264", b"\x00\x00\x00\x01\x67\x64") is None  # Annex B
    assert nonref_test("h264", None) is None
    assert nonref_test("mpeg4", avcc_config) is None
    hvcc = bytearray(23)
    hvcc[0], hvcc[21] = 1, 0x03  # numTemporalLayers 0 (unknown) and no SPS: nothing to go on
    assert nonref_test("hevc", bytes(hvcc)) is None
    hvcc[21] = 0x0B  # one temporal layer
    assert nonref_test("hevc", bytes(hvcc)) is not None


def test_hevc_highest_temporal_layer_comes_from_the_sps_too():
    sps = bytes([33 << 1, 1, (0 << 4) | (2 << 1) | 1, 0x01])  # sps_max_sub_layers_minus1 = 2
    hvcc = bytearray(23)
    hvcc[0], hvcc[21], hvcc[22] = 1, 0x0B, 1  # 1 temporal layer claimed, one array follows
    hvcc += bytes([0x80 | 33, 0, 1]) + len(sps).to_bytes(2, "big") + sps
    test = nonref_test("hevc", bytes(hvcc))
    assert not test(avcc(hevc_nal(0, tid=0)))
    assert test(avcc(hevc_nal(0, tid=2)))
    assert nonref_test("hevc", bytes(hvcc[:-2])) is None  # the record is cut short
